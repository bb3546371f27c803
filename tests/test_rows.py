"""common/rows.py: the one reader of row sources that the SFT data and the evaluation tasks share."""

import gzip
import json

import pytest

from common.rows import RowsError, on_hub, read_rows

ROWS = [{"prompt": "1+1", "response": "2"}, {"prompt": "2+2", "response": "4"}]


def lines(rows) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.mark.parametrize("name, text", [
    ("d.jsonl", lines(ROWS)),
    ("d.json", json.dumps(ROWS, indent=2)),  # one list
    ("d.json", json.dumps({"data": ROWS})),  # an object holding the list (the packaged benchmarks' shape)
    ("d.json", lines(ROWS)),  # JSON lines under a .json name
])
def test_every_local_json_shape_reads_the_same_rows(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    assert read_rows(str(path))[0] == ROWS
    gz = tmp_path / (name + ".gz")
    gz.write_bytes(gzip.compress(text.encode()))
    assert read_rows(str(gz))[0] == ROWS


def test_parquet_and_a_folder_of_files_in_name_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "d.parquet")
    assert read_rows(str(tmp_path / "d.parquet")) == (ROWS, ["", ""], [])
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "b.jsonl").write_text(lines(ROWS[1:]))
    (folder / "a.json").write_text(json.dumps(ROWS[:1]))
    (folder / "notes.txt").write_text("not rows")
    assert read_rows(str(folder)) == (ROWS, ["a.json: ", "b.jsonl:1: "], [])


def test_a_bad_line_is_a_problem_and_the_rows_after_it_are_still_read(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{broken\n\n" + json.dumps(ROWS[1]) + "\n")
    rows, where, problems = read_rows(str(path), limit=5)
    assert rows == ROWS and where == ["d.jsonl:1: ", "d.jsonl:4: "]
    assert problems == ["d.jsonl:2: not valid JSON (Expecting property name enclosed in double quotes at column 2)"]
    assert read_rows(str(path), limit=1)[0] == ROWS[:1]


def test_sources_that_cannot_be_read_name_themselves(tmp_path):
    with pytest.raises(RowsError, match=r"^file .*nope\.jsonl does not exist$"):
        read_rows(str(tmp_path / "nope.jsonl"))
    with pytest.raises(RowsError, match=r"^folder .* has no \.jsonl or \.json file$"):
        read_rows(str(tmp_path))
    (tmp_path / "bad.json").write_text("[{")
    with pytest.raises(RowsError, match=r"bad\.json: cannot be read \(JSONDecodeError: "):
        read_rows(str(tmp_path / "bad.json"))
    with pytest.raises(RowsError, match=r"^package:no_such_package/x\.jsonl: package 'no_such_package' is not"):
        read_rows("package:no_such_package/x.jsonl")


def test_what_is_looked_up_on_the_hub(tmp_path):
    assert on_hub("openai/gsm8k") and on_hub("org/name:config")
    assert not any(on_hub(s) for s in ("package:x/y", "./d", "/abs/d", "d.jsonl", "d.parquet", str(tmp_path)))
