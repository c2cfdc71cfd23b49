"""Run records: the resumable certification TSV (every row checked on a resume, repairs by truncation
only, one writer at a time) and atomic JSON sidecars."""

import json
import os
import resource

import pytest

from rsjax import locks, records

INDICES = list(range(0, 40, 4))
SETTINGS = {"sigma": 0.25, "n": 100}


def _row(i, num_samples=None):
    """A plausible row for index i: class i % 3, abstaining on every fifth index."""
    label = i % 3
    predict = -1 if i % 5 == 0 else label
    radius = 0.0 if predict == -1 else 0.1 + i / 100
    row = (i, label, predict, radius, int(predict == label), 0.01)
    return row if num_samples is None else row + (num_samples,)


def _written(path, count, **kw):
    """A TSV (and sidecar) holding the rows of the first `count` indices, closed."""
    with records.CertificationTSV(path, SETTINGS, indices=INDICES, num_classes=3, **kw) as tsv:
        tsv.append(_row(i) for i in INDICES[:count])
        tsv.write_sidecar({"complete": count == len(INDICES)})
    return path.read_bytes()


def _resume(path, **kw):
    with records.CertificationTSV(path, SETTINGS, indices=INDICES, num_classes=3, **kw) as tsv:
        return tsv.done


def test_round_trip_and_resume_after_every_row(tmp_path):
    path = tmp_path / "c.tsv"
    data = _written(path, 6)
    lines = data.decode().split("\n")
    assert lines[0] == "idx\tlabel\tpredict\tradius\tcorrect\ttime" and lines[-1] == ""
    assert lines[1] == "0\t0\t-1\t0\t0\t0.0100" and lines[2] == "4\t1\t1\t0.14\t1\t0.0100"
    assert _resume(path) == INDICES[:6]
    with records.CertificationTSV(path, SETTINGS, indices=INDICES, num_classes=3) as tsv:
        tsv.append(_row(i) for i in INDICES[6:])
        assert tsv.done == INDICES
    assert path.read_bytes().startswith(data)  # appended: the first six rows' bytes as they were
    assert path.read_bytes() == _written(tmp_path / "whole.tsv", len(INDICES))


def test_torn_last_line_is_cut_off_and_earlier_bytes_are_unchanged(tmp_path):
    path = tmp_path / "c.tsv"
    data = _written(path, 7)
    path.write_bytes(data + b"28\t1\t1\t0.3")  # a kill in the middle of writing the 8th row
    inode = path.stat().st_ino
    assert _resume(path) == INDICES[:7]
    assert path.read_bytes() == data
    assert path.stat().st_ino == inode  # cut in place by truncation, not rewritten into a new file


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("8\t2\t2\t0.18\t1\t0.0100\t7", "7 fields where the header has 6"),
        ("8\t2\t2\t0.18\t1", "5 fields where the header has 6"),
        ("8\t2\t2\tnan\t1\t0.0100", "radius 'nan' is not a finite number >= 0"),
        ("8\t2\t2\t-0.5\t1\t0.0100", "radius '-0.5' is not a finite number >= 0"),
        ("8\t2\t-1\t0.18\t0\t0.0100", r"radius 0.18 for an abstention \(predict -1\) must be 0"),
        ("12\t0\t0\t0.22\t1\t0.0100", "idx 12 where the requested order has 8"),
        ("8\t2\t3\t0.18\t0\t0.0100", r"predict 3 is outside \[-1, 3\)"),
        ("8\t-2\t2\t0.18\t0\t0.0100", r"label -2 is outside \[0, 3\)"),
        ("8\t2\t2\t0.18\t0\t0.0100", "correct 0 where predict 2 and label 2 give 1"),
        ("8\t2\t2\t0.18\t2\t0.0100", "correct 2 where"),
        ("8\t2\t2\t0.18\t1\tinf", "time 'inf' is not a finite number >= 0"),
        ("8.0\t2\t2\t0.18\t1\t0.0100", "idx '8.0' is not an integer"),
        ("8\t2\t2\t 0.18\t1\t0.0100", "radius ' 0.18' is not a finite number"),
        ("\x00\x00\x00", "1 fields where the header has 6"),
        ("", "1 fields where the header has 6"),
    ],
)
def test_a_bad_row_with_a_newline_is_an_error_naming_the_line(tmp_path, bad, reason):
    """The row of idx 8 (line 4) replaced by a bad one, in the middle of six rows and as the last of
    three (with its newline): refused, naming the line, and the file left as it was."""
    path = tmp_path / "c.tsv"
    for count in (6, 3):
        lines = _written(path, count).decode().split("\n")
        assert lines[3].startswith("8\t")
        damaged = "\n".join(lines[:3] + [bad] + lines[4:])
        path.write_text(damaged)
        with pytest.raises(records.RunRecordError, match=f"c.tsv, line 4: {reason}"):
            _resume(path)
        assert path.read_text() == damaged  # left untouched
        path.unlink()


def test_bad_bytes_and_extra_rows_are_errors(tmp_path):
    path = tmp_path / "c.tsv"
    data = _written(path, 6)
    path.write_bytes(data + b"\xff\xfe\n")
    with pytest.raises(records.RunRecordError, match="line 8: .*ascii"):
        _resume(path)
    data = _written(tmp_path / "whole.tsv", len(INDICES))
    path.write_bytes(data + data.split(b"\n", 1)[1])  # every row twice: two runs that overlapped
    with pytest.raises(records.RunRecordError, match="line 12: a row beyond the 10 requested"):
        _resume(path)
    path.write_bytes(b"idx\tlabel\n" + data)
    with pytest.raises(records.RunRecordError, match="c.tsv, line 1: not the header"):
        _resume(path)


def test_sequential_rows_check_num_samples(tmp_path):
    path = tmp_path / "s.tsv"
    kw = dict(indices=INDICES, num_classes=3, header=records.SEQUENTIAL_HEADER)
    with records.CertificationTSV(path, SETTINGS, **kw) as tsv:
        tsv.append(_row(i, 120) for i in INDICES[:3])
    with records.CertificationTSV(path, SETTINGS, **kw) as tsv:
        assert tsv.done == INDICES[:3]
    path.write_text(path.read_text() + "12\t0\t0\t0.22\t1\t0.0100\t0\n")
    with pytest.raises(records.RunRecordError, match="line 5: num_samples 0 is not >= 1"):
        records.CertificationTSV(path, SETTINGS, **kw)
    path.write_text(path.read_text().replace("\t0\n", "\n"))  # a six-column row
    with pytest.raises(records.RunRecordError, match="line 5: 6 fields where the header has 7"):
        records.CertificationTSV(path, SETTINGS, **kw)


def test_append_refuses_bad_rows_before_writing(tmp_path):
    path = tmp_path / "c.tsv"
    data = _written(path, 2)
    with records.CertificationTSV(path, SETTINGS, indices=INDICES, num_classes=3) as tsv:
        with pytest.raises(ValueError, match="refusing to write a bad row.*radius 'nan'"):
            tsv.append([_row(8), (12, 0, 0, float("nan"), 1, 0.01)])
        with pytest.raises(ValueError, match="idx 16 where the requested order has 8"):
            tsv.append([_row(16)])
        assert tsv.done == INDICES[:2]
    assert path.read_bytes() == data


@pytest.mark.parametrize("content", ["", '{\n  "settings": {\n    "sigma": 0.2', "[1, 2]"])
def test_an_empty_or_truncated_sidecar_is_an_error_naming_it(tmp_path, content):
    path = tmp_path / "c.tsv"
    data = _written(path, 3)
    (tmp_path / "c.tsv.json").write_text(content)
    with pytest.raises(
        records.RunRecordError, match=r"c\.tsv\.json (is empty|is not valid JSON|holds)"
    ):
        _resume(path)
    assert path.read_bytes() == data and (tmp_path / "c.tsv.json").read_text() == content
    (tmp_path / "c.tsv.json").unlink()
    with pytest.raises(records.RunRecordError, match="has rows but no sidecar"):
        _resume(path)


def test_other_settings_are_refused_with_the_difference(tmp_path):
    path = tmp_path / "c.tsv"
    data = _written(path, 3)
    with pytest.raises(records.RunRecordError, match="other settings .*n: 100 vs 200"):
        records.CertificationTSV(path, dict(SETTINGS, n=200), indices=INDICES)
    with pytest.raises(records.RunRecordError, match=r"extra: \(none\) vs 1"):
        records.CertificationTSV(path, dict(SETTINGS, extra=1), indices=INDICES)
    assert path.read_bytes() == data


def test_indices_may_grow_when_the_saved_ones_begin_the_new_ones(tmp_path):
    path = tmp_path / "c.tsv"
    saved = dict(SETTINGS, max=20)
    kw = dict(num_classes=3, index_settings=("max",))
    with records.CertificationTSV(path, saved, indices=INDICES[:5], **kw) as tsv:
        tsv.append(_row(i) for i in INDICES[:5])
        tsv.write_sidecar({"complete": True, "device_kind": "cpu"})
    data = path.read_bytes()
    # Shrinking, another start, or another setting changing with the indices: refused, untouched.
    for settings, indices in (
        (dict(SETTINGS, max=12), INDICES[:3]),
        (dict(SETTINGS, max=40), INDICES[1:]),
        (dict(SETTINGS, max=40, n=200), INDICES),
    ):
        with pytest.raises(records.RunRecordError, match="other settings"):
            records.CertificationTSV(path, settings, indices=indices, **kw)
    with pytest.raises(records.RunRecordError, match="may only grow"):
        records.CertificationTSV(path, dict(SETTINGS, max=12), indices=INDICES[:3], **kw)
    with pytest.raises(records.RunRecordError, match="max: 20 vs 40"):  # max not an index setting
        records.CertificationTSV(path, dict(SETTINGS, max=40), indices=INDICES, num_classes=3)
    assert path.read_bytes() == data
    with records.CertificationTSV(path, dict(SETTINGS, max=40), indices=INDICES, **kw) as tsv:
        assert tsv.done == INDICES[:5] and tsv.extended_from == 5
        sidecar = json.loads((tmp_path / "c.tsv.json").read_text())
        assert sidecar["settings"] == dict(SETTINGS, max=40, indices=INDICES)
        assert sidecar["complete"] is False and sidecar["device_kind"] == "cpu"
    # Taken over: the old, shorter run is now the shrink.
    with pytest.raises(records.RunRecordError, match="may only grow"):
        records.CertificationTSV(path, saved, indices=INDICES[:5], **kw)
    assert path.read_bytes() == data


def test_a_failed_repair_leaves_every_row(tmp_path, monkeypatch):
    path = tmp_path / "c.tsv"
    data = _written(path, 7) + b"28\t1"

    def fail(fd, size):
        raise OSError(28, "No space left on device")

    path.write_bytes(data)
    with monkeypatch.context() as m:
        m.setattr(records.os, "ftruncate", fail)
        with pytest.raises(OSError, match="No space left"):
            _resume(path)
    assert path.read_bytes() == data
    with records.CertificationTSV(path, SETTINGS, indices=INDICES, num_classes=3) as tsv:
        with monkeypatch.context() as m:
            m.setattr(records.os, "ftruncate", fail)
            with pytest.raises(OSError, match="No space left"):
                tsv.keep(3)
        assert tsv.done == INDICES[:7]
    assert path.read_bytes() == data[: data.rindex(b"\n") + 1]


def test_a_file_size_limit_during_a_resume_keeps_every_finished_row(tmp_path):
    """A file-size limit below the file's size (as a full disk): the repair shrinks the file, which
    the limit allows, and the append fails; rewriting the file (the old repair) would lose rows."""
    path = tmp_path / "c.tsv"
    data = _written(path, 7)
    path.write_bytes(data + b"28\t1\t1")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(data) // 2, hard))  # Python ignores SIGXFSZ
    try:
        with records.CertificationTSV(path, SETTINGS, indices=INDICES, num_classes=3) as tsv:
            with pytest.raises(OSError, match="too large"):
                tsv.append([_row(28)])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert path.read_bytes() == data


def test_write_json_is_atomic_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "run.json"
    records.write_json(path, {"a": 1})
    assert json.loads(path.read_text()) == {"a": 1}
    with pytest.raises(TypeError):
        records.write_json(path, {"a": object()})
    for step in ("fsync", "replace"):
        with monkeypatch.context() as m:
            m.setattr(records.os, step, lambda *a: (_ for _ in ()).throw(OSError(28, "disk full")))
            with pytest.raises(OSError, match="disk full"):
                records.write_json(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]
    records.write_json(path, {"a": 3})
    assert json.loads(path.read_text()) == {"a": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.json"]


def test_a_sidecar_write_that_fails_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "c.tsv"
    _written(path, 2)
    with records.CertificationTSV(path, SETTINGS, indices=INDICES) as tsv:
        with pytest.raises(TypeError):
            tsv.write_sidecar({"checkpoint": tmp_path})  # a Path is not JSON
    assert sorted(p.name for p in tmp_path.iterdir()) == [".c.tsv.lock", "c.tsv", "c.tsv.json"]


def test_one_writer_per_tsv(tmp_path):
    path = tmp_path / "c.tsv"
    with records.CertificationTSV(path, SETTINGS, indices=INDICES):
        with pytest.raises(locks.OutputLockedError, match=f"process id {os.getpid()}"):
            records.CertificationTSV(path, SETTINGS, indices=INDICES)
    with records.CertificationTSV(path, SETTINGS, indices=INDICES) as tsv:  # released on close
        assert tsv.done == []
    _written(path, 1)
    with pytest.raises(records.RunRecordError):  # a refused resume releases the lock as well
        records.CertificationTSV(path, dict(SETTINGS, n=1), indices=INDICES)
    assert _resume(path) == INDICES[:1]
