"""Generic CSV/JSONL input and the fingerprint."""

from __future__ import annotations

import json
from pathlib import Path

from shared.catalog.readers import load_records
from shared.catalog.records import fingerprint


def test_csv_and_jsonl_give_the_same_records(tmp_path: Path) -> None:
    csv_file = tmp_path / "catalog.csv"
    csv_file.write_text(
        "id,title,description,labels\n"
        '1,Red cotton shirt,"Soft, breathable",Clothing > Shirts|Fabric=Cotton\n'
        "2,Steel bottle,,Kitchen > Bottles\n"
    )
    jsonl_file = tmp_path / "catalog.jsonl"
    jsonl_file.write_text(
        "\n".join(
            json.dumps(o)
            for o in (
                {
                    "id": "1",
                    "title": "Red cotton shirt",
                    "description": "Soft, breathable",
                    "labels": ["Clothing > Shirts", "Fabric=Cotton"],
                },
                {"id": "2", "title": "Steel bottle", "labels": ["Kitchen > Bottles"]},
            )
        )
    )
    a = load_records(csv_file, "csv")
    b = load_records(jsonl_file, "jsonl")
    assert a == b
    assert a[0].text == "Red cotton shirt\nSoft, breathable"
    assert a[0].labels == ("Clothing > Shirts", "Fabric=Cotton") and a[0].has_attributes
    assert not a[1].has_attributes
    assert fingerprint(a) == fingerprint(b) != fingerprint(a[:1])
    assert load_records(csv_file, "csv", limit=1) == a[:1]
