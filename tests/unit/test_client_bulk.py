"""The pure parts of `embed-list`: reading the list, planning the jobs, and the resumable output folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from clip_client import ClipConfigError
from clip_client.bulk import plan
from clip_client.bulk_output import DONE, FAILED, PENDING, SKIPPED, BulkOutput
from clip_client.listfile import Entry, Kind, parse_line, read_entries, split_lines


@pytest.mark.parametrize(
    ("raw", "kind", "target"),
    [
        ("https://example.com/a.jpg", Kind.URL, "https://example.com/a.jpg"),
        ("  http://example.com/a b.jpg \t", Kind.URL, "http://example.com/a b.jpg"),
        ("HTTPS://EXAMPLE.COM/A.JPG", Kind.URL, "HTTPS://EXAMPLE.COM/A.JPG"),
        ("ftp://example.com/a.jpg", Kind.URL, "ftp://example.com/a.jpg"),
        ("data:image/png;base64,iVBORw0K", Kind.URL, "data:image/png;base64,iVBORw0K"),
        ("file:///tmp/my%20cat.jpg", Kind.FILE, "/tmp/my cat.jpg"),
        ("/srv/frames/0001.jpg", Kind.FILE, "/srv/frames/0001.jpg"),
        ("frames/0001.jpg", Kind.FILE, "frames/0001.jpg"),
        ("C:cat.jpg", Kind.FILE, "C:cat.jpg"),
        ("", Kind.SKIP, ""),
        ("   ", Kind.SKIP, ""),
        ("# frames of the first reel", Kind.SKIP, ""),
        ("  #indented comment", Kind.SKIP, ""),
    ],
)
def test_listfile_parse_line(raw, kind, target):
    entry = parse_line(7, raw)
    assert (entry.row, entry.line, entry.text, entry.kind, entry.target) == (7, 8, raw.strip(), kind, target)


def test_listfile_parse_line_expands_home(monkeypatch):
    monkeypatch.setenv("HOME", "/home/ops")
    assert parse_line(0, "~/cat.jpg").target == "/home/ops/cat.jpg"


@pytest.mark.parametrize(
    ("content", "lines"),
    [
        ("", []),
        ("a\n", ["a"]),
        ("a", ["a"]),
        ("a\r\nb\r\n", ["a", "b"]),
        ("a\n\nb\n", ["a", "", "b"]),
        ("a\n\n", ["a", ""]),
        ("a\x0bb\u2028c\n", ["a\x0bb\u2028c"]),
    ],
    ids=["empty", "one", "no-final-newline", "crlf", "blank-inside", "blank-last", "other-breaks-kept"],
)
def test_listfile_split_lines_on_newlines_only(content, lines):
    assert split_lines(content) == lines


def test_listfile_read_entries_drops_a_byte_order_mark():
    entries = read_entries("\ufeffhttps://x/a.jpg\n# note\nb.jpg\n".encode())
    assert [(e.row, e.kind, e.target) for e in entries] == [
        (0, Kind.URL, "https://x/a.jpg"),
        (1, Kind.SKIP, ""),
        (2, Kind.FILE, "b.jpg"),
    ]


def _entries(*lines: str) -> list[Entry]:
    return [parse_line(row, line) for row, line in enumerate(lines)]


def test_bulk_plan_batches_urls_and_sends_files_alone_in_line_order():
    entries = _entries("http://x/0", "http://x/1", "a.jpg", "#", "http://x/4", "http://x/5", "b.jpg")
    jobs = plan(entries, [True] * 7, batch_size=2, limit=None)
    assert [[e.row for e in job] for job in jobs] == [[0, 1], [2], [4, 5], [6]]


def test_bulk_plan_skips_rows_not_pending_and_stops_at_the_limit():
    entries = _entries("http://x/0", "http://x/1", "http://x/2", "a.jpg", "http://x/4", "b.jpg")
    pending = [False, True, True, True, True, True]
    jobs = plan(entries, pending, batch_size=16, limit=3)
    assert [[e.row for e in job] for job in jobs] == [[1, 2], [3]]


LIST = b"http://x/0\nhttp://x/1\n# comment\nmissing.jpg\n"


def _output(tmp_path, content: bytes = LIST, **kwargs: bool) -> BulkOutput:
    return BulkOutput(tmp_path / "out", content, read_entries(content), **kwargs)


def test_bulk_output_new_folder_marks_skipped_rows_and_has_no_embeddings_yet(tmp_path):
    output = _output(tmp_path)
    output.close()
    assert output.progress.tolist() == [PENDING, PENDING, SKIPPED, PENDING]
    assert output.dim is None and not output.embeddings_path.exists()
    assert output.counts() == {"succeeded": 0, "failed": 0, "skipped": 1, "pending": 3}


def test_bulk_output_resume_keeps_checkpointed_rows_and_drops_the_rest(tmp_path):
    entries = read_entries(LIST)
    first = _output(tmp_path)
    first.record_ok(entries[0], [1.0, 2.0])
    first.record_failure(entries[3], "read_failed", "No such file or directory: missing.jpg")
    first.checkpoint()
    first.record_ok(entries[1], [3.0, 4.0])  # recorded after the last checkpoint: a kill loses it
    second = _output(tmp_path)
    assert second.progress.tolist() == [DONE, PENDING, SKIPPED, FAILED] and second.dim == 2
    vectors = np.load(second.embeddings_path)
    assert vectors.dtype == np.float32 and vectors.shape == (4, 2) and vectors[0].tolist() == [1.0, 2.0]
    assert second.failures == {
        3: {
            "line": 4,
            "input": "missing.jpg",
            "code": "read_failed",
            "message": "No such file or directory: missing.jpg",
        }
    }


def test_bulk_output_resume_ignores_a_torn_last_failure_line(tmp_path):
    entries = read_entries(LIST)
    first = _output(tmp_path)
    first.record_failure(entries[0], "download_failed", "HTTP 404")
    first.close()
    with open(first.failures_path, "a", encoding="utf-8") as f:
        f.write('{"line": 2, "inp')  # killed mid-write
    second = _output(tmp_path)
    second.close()
    assert [json.loads(line)["line"] for line in second.failures_path.read_text().splitlines()] == [1]


def test_bulk_output_retry_failed_makes_failed_rows_pending_again(tmp_path):
    entries = read_entries(LIST)
    first = _output(tmp_path)
    first.record_failure(entries[3], "read_failed", "gone")
    first.close()
    second = _output(tmp_path, retry_failed=True)
    second.close()
    assert second.progress.tolist() == [PENDING, PENDING, SKIPPED, PENDING]
    assert second.failures == {} and second.failures_path.read_text() == ""


def test_bulk_output_failures_file_is_sorted_by_line(tmp_path):
    entries = read_entries(LIST)
    output = _output(tmp_path)
    output.record_failure(entries[3], "read_failed", "gone")
    output.record_failure(entries[0], "download_failed", "HTTP 404")
    output.close()
    assert [json.loads(line)["line"] for line in output.failures_path.read_text().splitlines()] == [1, 4]


@pytest.mark.parametrize("other", [LIST + b"http://x/4\n", LIST.replace(b"x/1", b"x/9")], ids=["longer", "edited"])
def test_bulk_output_refuses_a_folder_of_another_list(tmp_path, other):
    _output(tmp_path).close()
    with pytest.raises(ClipConfigError, match="holds the output of another list"):
        _output(tmp_path, other)


def test_bulk_output_refuses_a_folder_with_a_foreign_embeddings_file(tmp_path):
    (tmp_path / "out").mkdir()
    np.save(tmp_path / "out" / "embeddings.npy", np.ones((2, 2), dtype=np.float32))
    with pytest.raises(ClipConfigError, match="holds an embeddings.npy of something else"):
        _output(tmp_path)


def test_bulk_output_refuses_vectors_of_another_dim(tmp_path):
    entries = read_entries(LIST)
    output = _output(tmp_path)
    output.record_ok(entries[0], [1.0, 2.0])
    with pytest.raises(ClipConfigError, match="answered 3-dimensional vectors"):
        output.record_ok(entries[1], [1.0, 2.0, 3.0])


def test_bulk_output_refuses_to_resume_without_its_embeddings_file(tmp_path):
    entries = read_entries(LIST)
    output = _output(tmp_path)
    output.record_ok(entries[0], [1.0, 2.0])
    output.close()
    output.embeddings_path.unlink()
    with pytest.raises(ClipConfigError, match="embeddings.npy cannot be resumed"):
        _output(tmp_path)
