"""On-disk cache of arrays derived from the installed templates and atlases."""

import numpy as np
import pytest

from csttool_nipype import array_cache


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv(array_cache.CACHE_ENV, str(root))
    return root


def _source(tmp_path, text="v1"):
    path = tmp_path / "source.txt"
    path.write_text(text)
    return path


def test_second_call_reads_the_stored_arrays(cache_root, tmp_path):
    src = _source(tmp_path)
    calls = []

    def compute():
        calls.append(1)
        return {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.eye(4)}

    first = array_cache.cached_arrays("demo", compute, code_files=[array_cache.__file__], data_files=[src])
    second = array_cache.cached_arrays("demo", compute, code_files=[array_cache.__file__], data_files=[src])
    assert len(calls) == 1
    for key in ("a", "b"):
        assert second[key].dtype == first[key].dtype
        np.testing.assert_array_equal(second[key], first[key])
        assert not second[key].flags.writeable
    assert len(list(cache_root.iterdir())) == 1   # no temporary folder left behind


def test_a_changed_source_file_gives_a_new_entry(cache_root, tmp_path):
    src = _source(tmp_path)
    value = {"x": 1.0}
    compute = lambda: {"v": np.array([value["x"]])}  # noqa: E731
    kwargs = dict(code_files=[array_cache.__file__], data_files=[src])
    assert array_cache.cached_arrays("demo", compute, **kwargs)["v"][0] == 1.0
    value["x"] = 2.0
    src.write_text("a longer version 2")   # size (and mtime) change
    assert array_cache.cached_arrays("demo", compute, **kwargs)["v"][0] == 2.0


def test_unwritable_or_disabled_cache_still_computes(tmp_path, monkeypatch):
    src = _source(tmp_path)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    for setting in (str(blocker / "cache"), ""):
        monkeypatch.setenv(array_cache.CACHE_ENV, setting)
        out = array_cache.cached_arrays("demo", lambda: {"v": np.ones(3)},
                                        code_files=[array_cache.__file__], data_files=[src])
        np.testing.assert_array_equal(out["v"], np.ones(3))
    assert array_cache.cache_dir() is None


def test_a_damaged_entry_is_recomputed(cache_root, tmp_path):
    src = _source(tmp_path)
    kwargs = dict(code_files=[array_cache.__file__], data_files=[src])
    array_cache.cached_arrays("demo", lambda: {"v": np.ones(5)}, **kwargs)
    (entry,) = cache_root.iterdir()
    (entry / "v.npy").write_bytes(b"not numpy")
    np.testing.assert_array_equal(array_cache.cached_arrays("demo", lambda: {"v": np.ones(5)}, **kwargs)["v"],
                                  np.ones(5))


def test_template_and_atlas_maps_from_the_cache_equal_the_computed_ones(cache_root):
    """The cached MNI template and ROI maps are bit-identical to preparing them from the packages."""
    from csttool_nipype.science import rois, templates

    direct = templates._compute_template(2.0)
    templates.load_template.cache_clear()
    rois._prepared_maps.cache_clear()
    try:
        stored = templates.load_template(2.0)        # computes and stores
        templates.load_template.cache_clear()
        loaded = templates.load_template(2.0)        # reads the entry
        for tpl in (stored, loaded):
            np.testing.assert_array_equal(tpl.wm, direct["wm"])
            np.testing.assert_array_equal(tpl.brain, direct["brain"])
            np.testing.assert_array_equal(tpl.affine, direct["affine"])
        names, volumes, box, affine = rois._prepared_maps()
        rois._prepared_maps.cache_clear()
        names2, volumes2, box2, affine2 = rois._prepared_maps()
        assert names == names2
        for a, b in zip(volumes, volumes2):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(box, box2)
        np.testing.assert_array_equal(affine, affine2)
        assert {p.name.split("-")[0] for p in cache_root.iterdir()} == {"template", "cst"}
    finally:
        templates.load_template.cache_clear()
        rois._prepared_maps.cache_clear()
