"""Published weights: the safetensors round trip and where pretrained() finds a file."""

import pytest
import torch

import ddpm_lib as dl
from ddpm_lib import hub as pt
from ddpm_lib.gan import Generator
from ddpm_lib.vae import VAE


def test_weights_round_trip_in_float32_exactly_and_in_float16_to_its_rounding(tmp_path):
    torch.manual_seed(0)
    model = dl.UNet(in_channels=1, base_dim=8, dim_mults=(1, 2)).eval()
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 90])
    pt.save_weights(tmp_path / "a.safetensors", model, dtype=torch.float32)
    exact = pt.load_weights(tmp_path / "a.safetensors")
    assert type(exact) is dl.UNet and exact.config == model.config and not exact.training
    with torch.no_grad():
        torch.testing.assert_close(exact(x, t), model(x, t), rtol=0, atol=0)
        pt.save_weights(tmp_path / "h.safetensors", model)
        half = pt.load_weights(tmp_path / "h.safetensors")
        assert all(p.dtype == torch.float32 for p in half.parameters())
        # float16 keeps 11 significant bits: each weight moves by at most 2^-11 of itself.
        for a, b in zip(half.parameters(), model.parameters()):
            assert ((a - b).abs() <= b.abs() * 2**-11 + 1e-7).all()
    assert (tmp_path / "h.safetensors").stat().st_size < 0.55 * (tmp_path / "a.safetensors").stat().st_size


def test_the_same_weights_give_the_same_bytes_with_the_header_keys_sorted(tmp_path):
    # safetensors writes its metadata from a hash map, so its three keys could come out in any of
    # 3! = 6 orders, and the file's SHA-256 with them. Sorted keys leave one possible file.
    import json

    model = VAE(latent_dim=2, width=4)
    hashes = {pt.save_weights(tmp_path / f"{k}.safetensors", model) for k in range(4)}
    assert len(hashes) == 1
    blob = (tmp_path / "0.safetensors").read_bytes()
    n = int.from_bytes(blob[:8], "little")
    assert n % 8 == 0 and blob[8:9] == b"{"  # the format's padding and header start
    orders = []  # the keys of every JSON object in the header, in the order they were written
    json.loads(blob[8:8 + n], object_pairs_hook=lambda pairs: orders.append([k for k, _ in pairs]) or dict(pairs))
    assert orders and all(keys == sorted(keys) for keys in orders)
    assert {"format", "model_class", "model_config"} in [set(keys) for keys in orders]
    assert type(pt.load_weights(tmp_path / "0.safetensors")) is VAE


def test_load_weights_refuses_other_files_and_other_classes(tmp_path):
    path = tmp_path / "vae.safetensors"
    pt.save_weights(path, VAE(latent_dim=2, width=4))
    assert isinstance(pt.load_weights(path, expected=VAE), VAE)
    with pytest.raises(pt.WeightsError, match="holds a VAE, not a Generator"):
        pt.load_weights(path, expected=Generator)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(pt.WeightsError, match="not a readable safetensors file"):
        pt.load_weights(junk)
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(junk))
    with pytest.raises(pt.WeightsError, match="not a ddpm_lib weights file"):
        pt.load_weights(junk)


@pytest.fixture
def published(tmp_path, monkeypatch):
    """A published Generator: its file served from `served/`, a checkout at `checkout/`, a cache."""
    torch.manual_seed(0)
    model = Generator(latent_dim=4, width=4).eval()
    served = tmp_path / "served"
    sha256 = pt.save_weights(served / "g.safetensors", model)
    monkeypatch.setattr(pt, "PUBLISHED", {"tiny_gan": {"file": "g.safetensors", "sha256": sha256}})
    monkeypatch.setattr(pt, "DOWNLOAD_URL", served.as_uri() + "/{file}")
    monkeypatch.setattr(pt, "CHECKOUT", tmp_path / "checkout")
    monkeypatch.setenv("DDPM_CACHE_DIR", str(tmp_path / "cache"))
    return model, served / "g.safetensors"


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_pretrained_downloads_once_then_uses_the_cache(published, monkeypatch):
    model, served = published
    first = pt.pretrained("tiny_gan")
    assert same_weights(first, pt.load_weights(served)) and not first.training
    assert (pt.cache_dir() / "g.safetensors").exists()
    served.unlink()  # nothing left to download: the cached copy must do
    assert same_weights(pt.pretrained("tiny_gan"), first)


def test_pretrained_prefers_a_repository_checkout_to_a_download(published, monkeypatch):
    model, served = published
    pt.CHECKOUT.mkdir()
    served.rename(pt.CHECKOUT / "g.safetensors")
    assert isinstance(pt.pretrained("tiny_gan"), Generator)
    assert not (pt.cache_dir() / "g.safetensors").exists()  # read in place, not copied


def test_pretrained_errors_name_the_problem(published, monkeypatch):
    model, served = published
    with pytest.raises(pt.WeightsError, match="no published weights named 'tiny_vae'; published: \\['tiny_gan'\\]"):
        pt.pretrained("tiny_vae")
    served.write_bytes(served.read_bytes()[:-10])  # a truncated file on the server
    with pytest.raises(pt.WeightsError, match="download of .* is corrupt"):
        pt.pretrained("tiny_gan")
    assert not any(pt.cache_dir().iterdir())  # the bad download was not cached
    monkeypatch.setattr(pt, "DOWNLOAD_URL", "http://127.0.0.1:9/{file}")  # nothing listens there
    with pytest.raises(pt.WeightsError, match="could not be downloaded.*Offline\\? Copy g.safetensors into"):
        pt.pretrained("tiny_gan")
    (pt.cache_dir() / "g.safetensors").write_bytes(b"garbage")
    with pytest.raises(pt.WeightsError, match="corrupt or from another run.*Delete it"):
        pt.pretrained("tiny_gan")


def test_a_checkout_copy_that_fails_its_check_is_passed_over(published, monkeypatch):
    model, served = published
    pt.CHECKOUT.mkdir()
    (pt.CHECKOUT / "g.safetensors").write_text("version https://git-lfs.github.com/spec/v1\n")  # an LFS pointer
    assert same_weights(pt.pretrained("tiny_gan"), pt.load_weights(served))  # downloaded instead


def test_a_weights_file_naming_no_model_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": pt.FORMAT, "model_class": "os.system"})
    with pytest.raises(pt.WeightsError, match="does not say which model it holds"):
        pt.load_weights(path)
    save_file({"w": torch.zeros(2)}, str(path), metadata={"format": pt.FORMAT, "model_class": "ddpm_lib.vae.VAE",
                                                          "model_config": '{"depth": 3}'})
    with pytest.raises(pt.WeightsError, match="VAE cannot be built from the recorded config"):
        pt.load_weights(path)


def publish_script():
    """scripts/publish_weights.py as a module: the maintainers' step that publishes weights."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("publish_weights", dl.files.CHECKOUT_WEIGHTS.parent / "scripts"
                                                  / "publish_weights.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_publish_copies_the_file_and_records_its_hash(tmp_path, monkeypatch):
    monkeypatch.setattr(pt, "PUBLISHED", {})
    publish = publish_script().publish
    G = Generator(8, width=4)
    source = tmp_path / "run" / "g.safetensors"
    sha256 = pt.save_weights(source, G)
    registry, folder = tmp_path / "published.json", tmp_path / "weights"
    entry = publish("tiny_gan", source, chapter="02_gan", registry=registry, folder=folder)
    assert entry == {"file": "tiny_gan.safetensors", "sha256": sha256, "bytes": source.stat().st_size,
                     "chapter": "02_gan"}
    assert pt.read_registry(registry) == {"tiny_gan": entry} and pt.PUBLISHED["tiny_gan"] == entry
    assert pt.sha256_of(folder / "tiny_gan.safetensors") == sha256
    (tmp_path / "junk.safetensors").write_bytes(b"not weights")
    with pytest.raises(pt.WeightsError, match="not a readable safetensors"):
        publish("junk", tmp_path / "junk.safetensors", chapter="-", registry=registry, folder=folder)
    registry.write_text('{"broken": {"file": "x.safetensors"}}')
    with pytest.raises(pt.WeightsError, match="lacks a file name or a SHA-256"):
        pt.read_registry(registry)


def test_every_published_model_loads_from_the_checkout_with_its_hash():
    # The files in weights/ are what pretrained() serves offline; each must match the registry,
    # name an existing chapter, and be one that scripts/publish_weights.py knows to publish.
    script = publish_script()
    registry = pt.read_registry()
    assert set(registry) == set(script.MODELS)
    for name, entry in registry.items():
        path = pt.CHECKOUT / entry["file"]
        assert path.exists(), f"{name}: {path} is missing"
        assert pt.sha256_of(path) == entry["sha256"], f"{name}: {path} does not match its hash"
        assert path.stat().st_size == entry["bytes"]
        assert entry["chapter"] == script.MODELS[name]
        assert (pt.CHECKOUT.parent / "notebooks" / f"{entry['chapter']}.ipynb").exists(), name
        model = pt.load_weights(path)
        assert not model.training

