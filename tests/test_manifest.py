"""weights_manifest.json: valid against its schema, shipped unchanged in the package, consistent
with the model registry, and its hashes true of the fixture files we hold."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import jsonschema
import pytest
from conftest import CHECKPOINTS, REPO, need_shared

from upscale_cli.models import get_arch, get_spec, list_specs
from upscale_cli.weights import manifest_path

ROOT_MANIFEST = REPO / "weights_manifest.json"
PACKAGE_MANIFEST = REPO / "upscale_cli" / "weights_manifest.json"
SCHEMA = REPO / "upscale_cli" / "manifest_schema.json"


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def manifest() -> dict:
    return _load(ROOT_MANIFEST)


def _entries(manifest: dict):
    for name, scales in manifest["models"].items():
        for scale, entry in scales.items():
            yield name, int(scale), entry


def test_schema_is_valid_and_manifest_follows_it(manifest: dict) -> None:
    schema = _load(SCHEMA)
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema).validate(manifest)


@pytest.mark.parametrize(
    "change",
    [
        lambda e: e.pop("sha256"),  # neither hash
        lambda e: e.update(sha256_prefix="1af70e2c"),  # both hashes
        lambda e: e.update(sha256="1AF70E2C"),  # not a full lower-case hex digest
        lambda e: e.update(sources=[{"url": "ftp://x/y"}]),
        lambda e: e.update(sources=[{"hf": {"repo_id": "org/repo", "filename": "x.pth"}}]),  # no revision
        lambda e: e.update(sources=[]),
        lambda e: e.pop("license"),
    ],
)
def test_schema_rejects_broken_entries(manifest: dict, change) -> None:
    broken = json.loads(json.dumps(manifest))
    change(broken["models"]["fsrcnn"]["2"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, _load(SCHEMA), cls=jsonschema.Draft202012Validator)


def test_package_copy_is_the_root_file(monkeypatch: pytest.MonkeyPatch) -> None:
    assert PACKAGE_MANIFEST.read_bytes() == ROOT_MANIFEST.read_bytes()
    monkeypatch.delenv("UPSCALE_MANIFEST", raising=False)
    assert manifest_path().resolve() == ROOT_MANIFEST.resolve()


def test_upscale_manifest_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    other = tmp_path / "m.json"
    monkeypatch.setenv("UPSCALE_MANIFEST", str(other))
    assert manifest_path() == other


def test_entries_agree_with_the_registry(manifest: dict) -> None:
    for name, scale, entry in _entries(manifest):
        spec = get_spec(name)
        assert spec.name == name, f"{name}: use the registry name, not an alias"
        assert get_arch(entry["arch"]).name == spec.arch, name
        assert entry["kwargs"] == dict(spec.kwargs), name
        assert scale in spec.scales, (name, scale)
        assert not spec.trainable_only, f"{name} has weights listed but is marked trainable-only"


def test_published_scales_are_the_models_and_trainable_ones_have_none(manifest: dict) -> None:
    """A model lists weights for some of its scales (SRCNN's authors published x3 only); a
    multi-scale net lists every one of them."""
    listed = manifest["models"]
    for spec in list_specs():
        if spec.trainable_only:
            assert spec.name not in listed
        elif spec.name in listed:
            scales = {int(s) for s in listed[spec.name]}
            assert scales <= set(spec.scales), spec.name
            if get_arch(spec.arch).multiscale:
                assert scales == set(spec.scales), spec.name


def test_hash_prefixes_agree_with_file_names(manifest: dict) -> None:
    """torch.hub names files ``name-<sha256 prefix>.ext``: the manifest must say the same."""
    for name, scale, entry in _entries(manifest):
        found = re.search(r"-([0-9a-f]{8,})\.[a-z]+$", entry["file"])
        if found:
            digest = entry.get("sha256") or entry["sha256_prefix"]
            assert digest.startswith(found.group(1)), (name, scale)
        for source in entry["sources"]:
            if "url" in source and found:
                assert found.group(1) in source["url"], (name, scale)


def test_multiscale_entries_share_one_file(manifest: dict) -> None:
    for name, scales in manifest["models"].items():
        if get_arch(get_spec(name).arch).multiscale:
            assert len({(e["file"], e.get("sha256")) for e in scales.values()}) == 1, name


def test_fixture_hashes_match_the_manifest(manifest: dict) -> None:
    """Every upstream file that ../shared holds a copy of (and its companions) has the
    manifest's sha256 and size."""
    need_shared(CHECKPOINTS)
    checked = set()
    for name, scale, entry in _entries(manifest):
        for item in (entry, *entry.get("companions", ())):
            path = CHECKPOINTS / item["file"]
            if path.is_file():
                assert item["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest(), (name, scale, item["file"])
                assert item["size"] == path.stat().st_size, (name, scale, item["file"])
                checked.add(item["file"])
    assert {"carn_m.pth", "fsrcnn_x2.pth", "realesr-animevideov3.pth"} <= checked


def test_copy_of_unverified_release_is_flagged(manifest: dict) -> None:
    notes = manifest["models"]["realesr-animevideov3"]["4"]["notes"]
    assert "not checked against the release" in notes
