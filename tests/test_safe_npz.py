"""affectverse.data.safe_npz: MER-UniBench label files are read without executing anything stored in them."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest

from affectverse.data.safe_npz import UnsafeFileError, load_npz
from tests.helpers import SHARED


class _Payload:
    """Unpickling this object would call ``pathlib.Path(marker).touch()``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _write_object_npz(path, key, value):
    array = np.empty((), dtype=object)
    array[()] = value
    np.savez(path, **{key: array})


def test_plain_label_dicts_round_trip(tmp_path):
    labels = {"sample_1": {"emo": "happy", "val": 1.5}, "sample_2": {"emo": 3, "val": -10}}
    _write_object_npz(tmp_path / "label.npz", "test_corpus", labels)
    np.savez(tmp_path / "plain.npz", filenames=np.array(["a", "b"]), scores=np.arange(3.0))
    assert load_npz(tmp_path / "label.npz") == {"test_corpus": labels}
    plain = load_npz(tmp_path / "plain.npz")
    assert plain["filenames"].tolist() == ["a", "b"] and plain["scores"].tolist() == [0.0, 1.0, 2.0]


def test_a_code_execution_payload_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    _write_object_npz(path, "test_corpus", {"sample_1": _Payload(marker)})
    # the file really carries the payload: numpy's own loader would run it
    with np.load(path, allow_pickle=True) as unsafe:
        unsafe["test_corpus"]
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnsafeFileError, match=r"evil\.npz: refuses to load global pathlib"):
        load_npz(path)
    assert not marker.exists()


def test_a_raw_pickle_member_naming_os_system_is_refused(tmp_path):
    marker = tmp_path / "ran"
    stream = f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()  # protocol-0 pickle: os.system("touch ...")
    path = tmp_path / "raw.npz"
    with zipfile.ZipFile(path, "w") as zf, zf.open("k.npy", "w") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        fh.write(stream)
    with pytest.raises(UnsafeFileError, match=r"raw\.npz: refuses to load global os\.system"):
        load_npz(path)
    assert not marker.exists()


@pytest.mark.parametrize("bad", ["missing.npz", "not_a_zip.npz"])
def test_missing_or_corrupt_files_name_the_file(tmp_path, bad):
    path = tmp_path / bad
    if bad == "not_a_zip.npz":
        path.write_bytes(b"garbage")
    with pytest.raises((FileNotFoundError, ValueError), match=bad.replace(".", r"\.")):
        load_npz(path)


def test_the_shared_label_files_load():
    path = SHARED / "merunibench" / "labels" / "meld-process" / "label.npz"
    if not path.exists():
        pytest.skip(f"{path} is not here (../shared is only beside the project's own checkout)")
    corpus = load_npz(path)["test_corpus"]
    assert len(corpus) == 2610 and corpus["test_dia0_utt0"] == {"emo": 6, "val": -10}
