# Two commands a reader needs: `make book` builds the HTML book, `make test` runs every test.
# Both create a virtual environment in .venv (unless one is already active) and install what
# they need into it first.

PYTHON ?= python3
VENV := $(if $(VIRTUAL_ENV),$(VIRTUAL_ENV),.venv)
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.ddpm-book-installed

.PHONY: help install test unit notebooks book check-html chapters clean

help:
	@echo "make book   build the book into _build/html"
	@echo "make test   unit tests, every notebook in smoke mode, and the book build"
	@echo "make check-html   open every page of the built book in headless Chromium"
	@echo "make chapters   run every chapter in full, save its outputs, print each chapter's wall time"

$(PY):
	$(PYTHON) -m venv $(VENV)

$(INSTALLED): requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $@

install: $(INSTALLED)

unit: $(INSTALLED)
	# One test process per core, each on one thread: two processes each asking for every core
	# would fight over them.
	OMP_NUM_THREADS=1 $(PY) -m pytest tests --ignore=tests/integration -n auto --durations=10

# Every chapter, executed top to bottom with small sizes (DDPM_BOOK_SMOKE=1); outputs of cells
# marked "# NBVAL_CHECK_OUTPUT" must match the committed ones. First, the chapters' set-up cell
# installs ddpm_lib into a fresh environment, as in Colab, and a chapter runs there.
notebooks: $(INSTALLED)
	$(PY) -m pytest -p no:cacheprovider tests/integration
	DDPM_BOOK_SMOKE=1 MPLBACKEND=Agg $(PY) -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider --durations=0 --durations-min=1.0 notebooks

book: $(INSTALLED)
	$(VENV)/bin/jupyter-book build . -W -n --keep-going

test: unit notebooks book

# Every page in a real (headless, offline) Chromium: console errors, images, links, launch buttons.
check-html: book
	$(PY) scripts/check_html.py --html _build/html --screenshots _build/screenshots

# The outputs the book shows: every chapter (or CHAPTERS="notebooks/06_training.ipynb ...") run top
# to bottom in its full configuration and saved in place.
chapters: $(INSTALLED)
	$(PY) scripts/execute_chapters.py $(CHAPTERS)

clean:
	rm -rf _build
