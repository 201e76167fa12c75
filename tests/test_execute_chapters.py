"""scripts/execute_chapters.py, which writes the outputs the book shows, on two tiny notebooks."""

import importlib.util
from pathlib import Path

import nbformat

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "execute_chapters.py"
spec = importlib.util.spec_from_file_location("execute_chapters", SCRIPT)
execute_chapters = importlib.util.module_from_spec(spec)
spec.loader.exec_module(execute_chapters)


def notebook(path, *sources):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_chapters_run_in_full_configuration_in_their_own_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPM_BOOK_SMOKE", "1")  # as under `make test`: the script must switch it off
    chapter = notebook(tmp_path / "ch.ipynb", "import os\nprint('smoke:', os.environ.get('DDPM_BOOK_SMOKE'))",
                       "print('folder:', os.path.basename(os.getcwd()))")
    assert execute_chapters.main([str(chapter), "--out", str(tmp_path / "out")]) == 0
    done = nbformat.read(tmp_path / "out" / "ch.ipynb", as_version=4)
    texts = ["".join(o["text"] for o in c.outputs) for c in done.cells]
    assert texts == ["smoke: None\n", f"folder: {tmp_path.name}\n"]
    assert [c.execution_count for c in done.cells] == [1, 2]


def test_a_failing_chapter_is_reported_and_not_written(tmp_path, capsys):
    chapter = notebook(tmp_path / "bad.ipynb", "print('before')", "raise ValueError('the second cell fails')")
    assert execute_chapters.main([str(chapter), "--out", str(tmp_path / "out")]) == 1
    assert not (tmp_path / "out" / "bad.ipynb").exists()
    assert "the second cell fails" in capsys.readouterr().err


def test_the_wall_time_table_flags_chapters_and_a_book_over_budget():
    table = execute_chapters.wall_time_table({"01_vae.ipynb": 12.0, "06_training.ipynb": 31.0})
    assert "| 01_vae.ipynb | 12.0 | yes |" in table
    assert "| 06_training.ipynb | 31.0 | NO |" in table  # over 30 minutes
    assert "| **all** | **43.0** | yes |" in table  # the book's budget is 240
    over = {f"{k:02d}.ipynb": 30.0 for k in range(8)} | {"08.ipynb": 1.0}
    assert "| **all** | **241.0** | NO |" in execute_chapters.wall_time_table(over)


def test_widget_outputs_are_dropped_unless_the_cell_hides_its_outputs():
    widget = nbformat.v4.new_output("display_data", data={execute_chapters.WIDGET: {"model_id": "x"},
                                                          "text/plain": "bar"})
    text = nbformat.v4.new_output("stream", text="trained\n")
    shown, hidden = nbformat.v4.new_code_cell("train()"), nbformat.v4.new_code_cell("train()")
    shown.outputs, hidden.outputs = [widget, text], [widget]
    hidden.metadata["tags"] = ["remove-output"]
    nb = nbformat.v4.new_notebook(cells=[shown, hidden])
    execute_chapters.drop_live_widgets(nb)
    assert shown.outputs == [text]  # the printed summary stays, the stale progress bar goes
    assert hidden.outputs == [widget]  # the page hides it anyway
