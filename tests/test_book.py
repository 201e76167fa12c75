"""The chapters' helpers (ddpm_lib.book) and the rule that the core library never needs them."""

import ast
from pathlib import Path

import pytest
import torch

import ddpm_lib as dl
from ddpm_lib import book
from ddpm_lib.vae import VAE

PACKAGE = Path(dl.__file__).parent
CORE = ["schedule", "diffusion", "sampling", "ode", "timesteps", "flow", "evidence", "analytic", "embedding",
        "blocks", "unet", "train", "loop", "ema", "precision", "distributed", "checkpoint", "hub", "data", "metrics",
        "vae", "gan", "plotting", "utils"]


def imported_modules(name):
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.add(node.module or "")
            found.update(alias.name for alias in node.names if node.module is None)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ddpm_lib"):
            found.add(node.module.removeprefix("ddpm_lib").lstrip("."))
    return found


def test_the_core_imports_nothing_from_the_book_helpers_and_the_gan_no_trainer():
    assert sorted(CORE + ["book", "__init__"]) == sorted(p.stem for p in PACKAGE.glob("*.py"))
    for name in CORE:
        assert "book" not in imported_modules(name), name
    assert "train" not in imported_modules("gan")  # the GAN needs the shared helpers, not the DDPM loop


def test_every_module_reads_in_one_sitting():
    for path in PACKAGE.glob("*.py"):
        assert len(path.read_text().splitlines()) <= 250, path.name


def test_smoke_mode_reads_the_environment(monkeypatch):
    for value, expected in (("1", True), ("true", True), ("0", False), ("", False), ("False", False)):
        monkeypatch.setenv("DDPM_BOOK_SMOKE", value)
        assert book.smoke_mode() is expected
    monkeypatch.delenv("DDPM_BOOK_SMOKE")
    assert book.smoke_mode() is False


def test_start_chapter_seeds_and_reports_where_it_runs(capsys, monkeypatch):
    monkeypatch.setenv("DDPM_BOOK_SMOKE", "1")
    chapter = dl.start_chapter(seed=7)
    first = torch.rand(3)
    dl.start_chapter(seed=7)
    assert torch.equal(torch.rand(3), first)
    out = capsys.readouterr().out
    assert "device: " in out and "mode: smoke" in out
    assert chapter.smoke and chapter.summary().startswith("This chapter ran in 0 min")


def test_timed_returns_the_result_and_a_duration():
    out, seconds = book.timed(lambda: sum(range(10_000)), device="cpu")
    assert out == sum(range(10_000)) and 0 <= seconds < 5


def test_in_batches_covers_every_item_once_in_order():
    calls = []

    def numbers(n, start):
        calls.append((n, start))
        return torch.arange(start, start + n)

    assert torch.equal(book.in_batches(numbers, 1001, batch_size=300), torch.arange(1001))
    assert calls == [(300, 0), (300, 300), (300, 600), (101, 900)]
    with pytest.raises(ValueError, match="positive"):
        book.in_batches(numbers, 0)


def test_load_trained_prefers_the_readers_checkpoint_then_the_published_weights(tmp_path, monkeypatch, capsys):
    from ddpm_lib import hub

    monkeypatch.setenv("DDPM_BOOK_CHECKPOINTS", str(tmp_path / "drive"))
    monkeypatch.setenv("DDPM_BOOK_SMOKE", "0")
    monkeypatch.setenv("DDPM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hub, "CHECKOUT", tmp_path / "checkout")
    torch.manual_seed(0)
    published = VAE(latent_dim=2, width=4)
    sha256 = hub.save_weights(tmp_path / "checkout" / "vae.safetensors", published, dtype=torch.float32)
    monkeypatch.setattr(hub, "PUBLISHED", {"vae": {"file": "vae.safetensors", "sha256": sha256}})

    model, source = book.load_trained("vae", device="cpu")
    assert source == "the published weights 'vae'" and not model.training
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), published.state_dict().values()))

    own = VAE(latent_dim=3, width=4)
    dl.save_model(tmp_path / "drive" / "vae.pt", own)
    assert book.checkpoint_path("vae") == tmp_path / "drive" / "vae.pt"
    model, source = book.load_trained("vae", device="cpu")
    assert source == f"your checkpoint {tmp_path / 'drive' / 'vae.pt'}" and model.config == own.config
    assert "vae: VAE from your checkpoint" in capsys.readouterr().out
    monkeypatch.setenv("DDPM_BOOK_SMOKE", "1")
    assert book.checkpoint_path("vae").name == "vae_smoke.pt"
    with pytest.raises(hub.WeightsError, match="no published weights named 'gan'"):
        book.load_trained("gan")


def test_estimate_seconds_scales_the_timed_probe():
    calls = []
    seconds = book.estimate_seconds(lambda: calls.append(sum(range(20_000))), 1000, probe_steps=4)
    assert len(calls) == 5  # one warm-up, four timed
    assert 0 < seconds < 60
    with pytest.raises(ValueError, match="probe_steps"):
        book.estimate_seconds(lambda: None, 10, probe_steps=0)


def test_digits_split_the_test_digits_once_and_shrink_in_smoke_mode(monkeypatch):
    import ddpm_lib.book as b

    labels = torch.arange(100) % 10
    images = torch.arange(100, dtype=torch.uint8).view(100, 1, 1).expand(100, 28, 28)
    monkeypatch.setattr(b, "load_mnist", lambda split: (images, labels))
    monkeypatch.setenv("DDPM_BOOK_SMOKE", "0")
    train, held = b.digits("train"), b.digits("held_out")
    assert len(train[0]) == 80 and len(held[0]) == 20  # 20% held out, 2 of each digit
    assert torch.bincount(held[1]).tolist() == [2] * 10
    ids = torch.cat([train[0][:, 0, 0], held[0][:, 0, 0]]).long()
    assert sorted(ids.tolist()) == list(range(100))  # disjoint and complete
    assert torch.equal(b.digits("train")[0], train[0])  # fixed
    assert len(b.digits("all")[0]) == 100
    monkeypatch.setattr(b, "SMOKE_DIGITS", 8)
    monkeypatch.setenv("DDPM_BOOK_SMOKE", "1")
    assert len(b.digits("train")[0]) == 8
    with pytest.raises(ValueError, match="part must be"):
        b.digits("test")
