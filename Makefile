# Two commands a reader needs: `make book` builds the HTML book, `make test` runs every test.
# Both create a virtual environment in .venv (unless one is already active) and install what
# they need into it first.

PYTHON ?= python3
VENV := $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.ddpm-book-installed

.PHONY: help install test unit notebooks book check-html clean

help:
	@echo "make book   build the book into _build/html"
	@echo "make test   unit tests, every notebook in smoke mode, and the book build"
	@echo "make check-html   open every page of the built book in headless Chromium"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $@

install: $(INSTALLED)

unit: $(INSTALLED)
	$(PY) -m pytest tests

# Every chapter, executed top to bottom with small sizes (DDPM_BOOK_SMOKE=1); outputs of cells
# marked "# NBVAL_CHECK_OUTPUT" must match the committed ones.
notebooks: $(INSTALLED)
	DDPM_BOOK_SMOKE=1 MPLBACKEND=Agg $(PY) -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks

book: $(INSTALLED)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

test: unit notebooks book

# Every page in a real (headless, offline) Chromium: console errors, images, links, launch buttons.
check-html: book
	$(PY) scripts/check_html.py --html _build/html --screenshots _build/screenshots

clean:
	rm -rf _build
