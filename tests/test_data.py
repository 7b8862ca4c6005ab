"""The data layer: loaders per format, k-core, ordering, leave-last-out, files, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from genrec.config import DataConfig, GenrecConfig
from genrec.data import FORMATS, PreparedDataset, kcore_mask, load_raw, prepare, prepare_stage, truncate
from genrec.errors import GenrecError
from genrec.runs import RunFolder

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BUNDLED_README = REPO / "genrec" / "data" / "bundled" / "README.md"


def shared(name: str) -> Path:
    path = DATA / name
    if not path.is_dir():
        pytest.skip(f"{path} not present (the shared datasets live beside the repository)")
    return path


def _cfg(run: Path, **data) -> GenrecConfig:
    return GenrecConfig(run_dir=str(run), data=DataConfig(**data))


def _counts(ds: PreparedDataset) -> tuple[int, int, int]:
    return ds.n_users, ds.n_items, ds.n_interactions


def _table(
    tmp_path: Path, rows: list[tuple], name: str = "inter.csv", columns: tuple[str, ...] = ("user", "item", "ts")
) -> Path:
    path = tmp_path / name
    df = pd.DataFrame(rows, columns=list(columns))
    if name.endswith(".parquet"):
        df.to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False, sep="\t" if name.endswith(".tsv") else ",")
    return path


def _table_cfg(path: Path, **kw) -> DataConfig:
    base = dict(format="table", path=str(path), user_col="user", item_col="item", time_col="ts", kcore=0)
    base.update(kw)
    return DataConfig(**base)


def _stage_leftovers(run: Path) -> list[str]:
    return sorted(p.name for p in run.iterdir() if ".tmp-" in p.name or ".old-" in p.name) if run.exists() else []


# --------------------------------------------------------------------------- real data


def test_beauty_keeps_published_counts(tmp_path):
    folder = shared("amazon-beauty-2014")
    ds = prepare_stage(_cfg(tmp_path / "run", format="p5", path=str(folder), kcore=5))
    assert _counts(ds) == (22363, 12101, 198502)
    stats = json.loads((tmp_path / "run" / "data" / "stats.json").read_text())
    assert (stats["users"], stats["items"], stats["interactions"]) == (22363, 12101, 198502)
    assert stats["items_without_text"] == 0 and stats["train_interactions"] == 198502 - 2 * 22363
    assert RunFolder(tmp_path / "run").stage_info("data")["counts"]["users"] == 22363
    # original ids, not P5's order-leaking numbers: the first line is `1 1 2 3 4 5`
    maps = json.loads((folder / "datamaps.json").read_text())
    user = maps["id2user"]["1"]
    seq = ds.sequences.set_index("user_id").loc[user, "items"]
    assert list(seq) == [maps["id2item"][str(i)] for i in range(1, 6)]
    assert ds.items["item_id"].tolist() == sorted(maps["id2item"].values())
    assert ds.default_template == "Attributes: {attributes}"


def test_scientific_keeps_published_counts(tmp_path):
    folder = shared("amazon-scientific-2018")
    ds = prepare_stage(_cfg(tmp_path / "run", format="lcrec", path=str(folder), kcore=5))
    assert _counts(ds) == (8317, 4344, 58492)
    inter = json.loads((folder / "Scientific.inter.json").read_text())
    assert ds.sequences.set_index("user_id").loc["0", "items"] == [str(i) for i in inter["0"]]
    assert set(ds.text_fields) >= {"title", "description", "brand", "categories"}
    assert ds.source["name"] == "Scientific"
    # every title already ends with "." in LC-Rec's files: the template adds no second one
    assert ds.default_template.startswith("{title} Brand: {brand}.")
    # same result when the dataset is named explicitly
    named = prepare(load_raw(DataConfig(format="lcrec", path=str(folder), name="Scientific")), DataConfig())
    assert _counts(named) == (8317, 4344, 58492)


def test_bundled_equals_movietweetings_derived_from_shared_files():
    folder = shared("movietweetings-100k")
    derived = prepare(load_raw(DataConfig(format="movietweetings", path=str(folder))), DataConfig(kcore=5))
    bundled = prepare(load_raw(DataConfig(format="bundled")), DataConfig(kcore=5))
    assert _counts(bundled) == _counts(derived)
    assert bundled.sequences.equals(derived.sequences)
    assert bundled.items.equals(derived.items)
    # the README states the measured numbers
    readme = BUNDLED_README.read_text()
    for n in _counts(bundled):
        assert f"{n:,}" in readme
    # leading zeros of IMDb ids survive; non-ASCII titles are read as UTF-8
    raw = load_raw(DataConfig(format="movietweetings", path=str(folder)))
    assert raw.items.loc[raw.items["item_id"] == "0002844", "title"].item().startswith("Fantômas")
    assert len(raw.interactions) == 100_000


def test_bundled_files_and_notice():
    raw = load_raw(DataConfig(format="bundled"))
    assert list(raw.items.columns) == ["item_id", "title", "genres"]
    assert raw.interactions["user_id"].map(type).eq(str).all()
    assert raw.interactions["timestamp"].dtype == "int64"
    folder = BUNDLED_README.parent
    assert "MIT License" in (folder / "LICENSE").read_text()
    assert "Dooms" in (folder / "NOTICE").read_text()
    assert not (folder / "users.dat").exists()
    ds = prepare(raw, DataConfig())
    assert _counts(ds) == (4333, 2414, 68055)


# --------------------------------------------------------------------------- ordering, k-core, splits


def test_chronological_order_with_stable_ties(tmp_path):
    rows = [
        ("u1", "b", 20),
        ("u2", "x", 3),
        ("u1", "a", 10),
        ("u1", "c", 20),
        ("u1", "d", 5),
        ("u2", "y", 3),
        ("u1", "e", 20),
        ("u2", "z", 1),
    ]
    ds = prepare(load_raw(_table_cfg(_table(tmp_path, rows))), _table_cfg(tmp_path))
    seqs = ds.sequences.set_index("user_id")
    # equal timestamps keep the file order: b, c, e and x, y
    assert seqs.loc["u1", "items"] == ["d", "a", "b", "c", "e"]
    assert seqs.loc["u1", "timestamps"] == [5, 10, 20, 20, 20]
    assert seqs.loc["u2", "items"] == ["z", "x", "y"]
    assert ds.sequences["user_id"].tolist() == ["u1", "u2"]
    assert ds.items["item_id"].tolist() == sorted("abcdexyz")


def test_leave_last_out_split(tmp_path):
    rows = [
        ("u2", "x", 1),
        ("u2", "y", 2),
        ("u2", "z", 3),
        ("u1", "a", 1),
        ("u1", "b", 2),
        ("u1", "c", 3),
        ("u1", "d", 4),
        ("u3", "a", 1),
        ("u3", "b", 2),
    ]  # too short to split
    ds = prepare(load_raw(_table_cfg(_table(tmp_path, rows))), _table_cfg(tmp_path))
    assert ds.split("valid") == [("u1", ["a", "b"], "c"), ("u2", ["x"], "y")]
    assert ds.split("test") == [("u1", ["a", "b", "c"], "d"), ("u2", ["x", "y"], "z")]
    assert ds.split("test", max_history=2) == [("u1", ["b", "c"], "d"), ("u2", ["x", "y"], "z")]
    assert ds.train_sequences() == {"u1": ["a", "b"], "u2": ["x"]}
    assert truncate(["a", "b", "c"], 2) == ["b", "c"] and truncate(["a"], 0) == ["a"]
    assert ds.filters["short_users_removed"] == 1 and ds.filters["short_user_interactions_removed"] == 2
    stats = ds.stats()
    assert (stats["users"], stats["interactions"], stats["train_interactions"]) == (2, 7, 3)
    assert (stats["valid_targets"], stats["test_targets"], stats["max_sequence_length"]) == (2, 2, 4)
    assert ds.item_index() == {"a": 0, "b": 1, "c": 2, "d": 3, "x": 4, "y": 5, "z": 6}
    with pytest.raises(GenrecError, match="unknown split"):
        ds.split("train")


def test_kcore_iterates_until_stable(tmp_path):
    core = [(f"u{u}", f"i{i}", u * 10 + i) for u in (1, 2, 3) for i in (1, 2, 3)]
    # u5 and items i4, i5 fall in the first pass; only then is u4 left with one item
    chain = [("u4", "i1", 1), ("u4", "i4", 2), ("u4", "i5", 3), ("u5", "i4", 4), ("u5", "i5", 5)]
    path = _table(tmp_path, core + chain)
    ds = prepare(load_raw(_table_cfg(path)), _table_cfg(path, kcore=3))
    assert sorted(ds.sequences["user_id"]) == ["u1", "u2", "u3"]
    assert ds.items["item_id"].tolist() == ["i1", "i2", "i3"]
    assert ds.filters["kcore_rounds"] == 2
    assert ds.filters["kcore_removed"] == {"users": 2, "items": 2, "interactions": 5}
    # a single pass would have kept u4 with i1
    users = pd.factorize(pd.Series([r[0] for r in core + chain]))[0]
    items = pd.factorize(pd.Series([r[1] for r in core + chain]))[0]
    keep, rounds = kcore_mask(users, items, 3)
    assert keep.sum() == 9 and rounds == 2
    assert kcore_mask(users, items, 0)[0].all()


def test_dedup_keeps_earliest(tmp_path):
    rows = [("u1", "a", 5), ("u1", "b", 1), ("u1", "a", 2), ("u1", "c", 3), ("u1", "d", 9)]
    path = _table(tmp_path, rows)
    ds = prepare(load_raw(_table_cfg(path)), _table_cfg(path, dedup=True))
    assert ds.sequences["items"][0] == ["b", "a", "c", "d"]
    assert ds.filters["duplicates_removed"] == 1
    kept = prepare(load_raw(_table_cfg(path)), _table_cfg(path))
    assert kept.sequences["items"][0] == ["b", "a", "c", "a", "d"]


# --------------------------------------------------------------------------- files


def test_prepared_files_are_deterministic_and_round_trip(tmp_path):
    a = prepare_stage(_cfg(tmp_path / "a", format="bundled"))
    prepare_stage(_cfg(tmp_path / "b", format="bundled"))
    files = sorted(p.name for p in (tmp_path / "a" / "data").iterdir())
    assert files == ["dataset.json", "items.parquet", "sequences.parquet", "stats.json"]
    for name in files:
        assert (tmp_path / "a" / "data" / name).read_bytes() == (tmp_path / "b" / "data" / name).read_bytes(), name
    loaded = PreparedDataset.load(tmp_path / "a" / "data")
    assert loaded.sequences.equals(a.sequences) and loaded.items.equals(a.items)
    assert loaded.split("test") == a.split("test") and loaded.stats() == a.stats()
    assert (loaded.text_fields, loaded.default_template) == (["title", "genres"], "{title}. Genres: {genres}")
    assert PreparedDataset.load(tmp_path / "a").n_items == a.n_items  # the run folder works too
    loaded.save(tmp_path / "again")
    for name in files:
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "a" / "data" / name).read_bytes(), name


def test_load_without_prepared_data(tmp_path):
    with pytest.raises(GenrecError, match="has no prepared data") as e:
        PreparedDataset.load(tmp_path / "run" / "data")
    assert "genrec data prepare" in str(e.value)


# --------------------------------------------------------------------------- formats


def test_table_csv_tsv_and_parquet_agree(tmp_path):
    rows = [("7", "0012", 3), ("7", "0005", 1), ("7", "0100", 2), ("8", "0012", 1), ("8", "0005", 2), ("8", "0100", 3)]
    items = tmp_path / "items.csv"
    pd.DataFrame(
        {"item": ["0012", "0005"], "name": ["Twelve", "Five"], "kind": ["x", ""], "other": ["no", "no"]}
    ).to_csv(items, index=False)
    results = []
    for name in ("inter.csv", "inter.tsv", "inter.parquet"):
        path = _table(tmp_path, rows, name)
        cfg = _table_cfg(path, items_path=str(items), text_cols=["name", "kind"])
        results.append(prepare(load_raw(cfg), cfg))
    first = results[0]
    for other in results[1:]:
        assert other.sequences.equals(first.sequences) and other.items.equals(first.items)
    # ids keep their leading zeros, order follows the time column
    assert first.sequences.set_index("user_id").loc["7", "items"] == ["0005", "0100", "0012"]
    assert first.items.to_dict("list") == {
        "item_id": ["0005", "0012", "0100"],
        "name": ["Five", "Twelve", ""],
        "kind": ["", "x", ""],
    }
    assert first.text_fields == ["name", "kind"] and first.default_template == "{name}. Kind: {kind}"
    stats = first.stats()
    assert stats["items_not_in_item_table"] == 1 and stats["items_without_text"] == 1
    assert first.source["format"] == "table" and len(first.source["sha256"]["interactions"]) == 64


def test_table_file_order_and_dates(tmp_path):
    rows = [("u", "c", "2024-03-01"), ("u", "a", "2024-01-01"), ("u", "b", "2024-02-01")]
    path = _table(tmp_path, rows)
    by_date = prepare(load_raw(_table_cfg(path)), _table_cfg(path))
    assert by_date.sequences["items"][0] == ["a", "b", "c"]
    file_order = prepare(load_raw(_table_cfg(path, time_col=None)), _table_cfg(path))
    assert file_order.sequences["items"][0] == ["c", "a", "b"]
    assert file_order.sequences["timestamps"][0] == [0, 1, 2]


def test_movielens_format(tmp_path):
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "ratings.dat").write_text(
        "1::10::5::978300760\n1::20::3::978302109\n1::30::4::978300000\n"
        "2::10::4::978298413\n2::20::5::978299000\n2::30::1::978297000\n"
    )
    # MovieLens 1M ships its movie titles in Latin-1
    (folder / "movies.dat").write_bytes(
        "10::Misérables, Les (1995)::Drama|Musical\n20::Toy Story (1995)::Animation|Children's|Comedy\n".encode(
            "latin-1"
        )
    )
    cfg = DataConfig(format="movielens", path=str(folder), kcore=0)
    ds = prepare(load_raw(cfg), cfg)
    assert ds.sequences.set_index("user_id").loc["1", "items"] == ["30", "10", "20"]
    assert ds.items.to_dict("list") == {
        "item_id": ["10", "20", "30"],
        "title": ["Misérables, Les (1995)", "Toy Story (1995)", ""],
        "genres": ["Drama, Musical", "Animation, Children's, Comedy", ""],
    }
    assert ds.stats()["items_not_in_item_table"] == 1
    raw = load_raw(cfg)
    assert raw.interactions["rating"].tolist()[:2] == [5.0, 3.0]
    # items_path overrides movies.dat; relative paths start at `base`
    (folder / "films.dat").write_text("30::Heat (1995)::Action\n", encoding="utf-8")
    over = load_raw(DataConfig(format="movielens", path="ml", items_path="ml/films.dat"), base=tmp_path)
    assert over.items.to_dict("list") == {"item_id": ["30"], "title": ["Heat (1995)"], "genres": ["Action"]}


def test_p5_missing_attributes_give_empty_text(tmp_path):
    folder = tmp_path / "p5"
    folder.mkdir()
    (folder / "sequential_data.txt").write_text("1 1 2 3\n2 2 3 1\n")
    (folder / "datamaps.json").write_text(
        json.dumps({"id2user": {"1": "AU1", "2": "AU2"}, "id2item": {"1": "B01", "2": "B02", "3": "B03"}})
    )
    (folder / "item_attributes.json").write_text(
        json.dumps({"1": {"asin": "B01", "attributes": ["Brand", "Makeup"]}, "2": {"asin": "B02", "attributes": []}})
    )
    cfg = DataConfig(format="p5", path=str(folder), kcore=0)
    ds = prepare(load_raw(cfg), cfg)
    assert ds.split("test") == [("AU1", ["B01", "B02"], "B03"), ("AU2", ["B02", "B03"], "B01")]
    assert ds.items["attributes"].tolist() == ["Brand, Makeup", "", ""]
    assert ds.stats()["items_without_text"] == 2 and ds.stats()["items_not_in_item_table"] == 1


# RecBole's ml-100k layout: a typed, tab-separated header
RECBOLE_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "196\t242\t3\t881250949\n"
    "196\t302\t4\t881250940\n"
    "196\t377\t1\t881250999.5\n"
    "\n"
    "22\t377\t5\t878887116\n"
    "22\t242\t2\t878887110\n"
    "22\t302\t4\t878887120\n"
)
RECBOLE_ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\tprice:float\n"
    "242\tKolya\t1996\tComedy\t3.5\n"
    "302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\t2\n"
)


def test_recbole_atomic_files(tmp_path):
    folder = tmp_path / "ml-100k"
    _write(folder / "ml-100k.inter", RECBOLE_INTER)
    _write(folder / "ml-100k.item", RECBOLE_ITEM)
    cfg = DataConfig(format="recbole", path=str(folder), kcore=0)
    raw = load_raw(cfg)
    assert raw.interactions["rating"].tolist() == [3.0, 4.0, 1.0, 5.0, 2.0, 4.0]
    ds = prepare(raw, cfg)
    # ordered by the timestamp field; a fractional second keeps its place
    assert ds.sequences.set_index("user_id").loc["196", "items"] == ["302", "242", "377"]
    assert ds.sequences.set_index("user_id").loc["22", "items"] == ["242", "377", "302"]
    # text: the token and token_seq fields (not the float price), token_seq kept as written
    assert ds.text_fields == ["movie_title", "release_year", "class"]
    assert ds.items.to_dict("list") == {
        "item_id": ["242", "302", "377"],
        "movie_title": ["Kolya", "L.A. Confidential", ""],
        "release_year": ["1996", "1997", ""],
        "class": ["Comedy", "Crime Film-Noir Mystery Thriller", ""],
    }
    assert ds.default_template == "{movie_title}. Release year: {release_year}. Class: {class}"
    assert ds.source["format"] == "recbole" and ds.source["name"] == "ml-100k"
    assert set(ds.source["sha256"]) == {"interactions", "items"}

    # several datasets in one folder: data.name picks one; the .inter file itself works too
    _write(folder / "other.inter", "user_id:token\titem_id:token\n1\t2\n")
    with pytest.raises(GenrecError, match="several RecBole datasets.*data.name"):
        load_raw(cfg)
    named = load_raw(DataConfig(format="recbole", path=str(folder), name="ml-100k", text_cols=["movie_title"]))
    assert named.text_fields == ["movie_title"] and named.default_template == "{movie_title}"
    # no .item file, other field names, file order
    bare = load_raw(DataConfig(format="recbole", path=str(folder / "other.inter"), time_col=None, user_col="user_id"))
    assert bare.interactions[["user_id", "item_id", "timestamp"]].values.tolist() == [["1", "2", 0]]
    assert bare.text_fields == [] and bare.items.empty


def _p5_folder(tmp_path: Path, **maps_extra) -> Path:
    folder = tmp_path / "p5"
    folder.mkdir()
    (folder / "sequential_data.txt").write_text("1 1 2 3\n2 2 3 1\n")
    maps = {"id2user": {"1": "AU1", "2": "AU2"}, "id2item": {"1": "B01", "2": "B02", "3": "B03"}, **maps_extra}
    (folder / "datamaps.json").write_text(json.dumps(maps))
    return folder


def test_p5_s3rec_item2attributes_named_by_datamaps(tmp_path, caplog):
    # S3-Rec's file as published: item number -> attribute ids (with repeats); P5's datamaps
    # carry S3-Rec's id2attribute
    folder = _p5_folder(tmp_path, attribute2id={"Nike": 1, "Shoes": 2}, id2attribute={"1": "Nike", "2": "Shoes"})
    (folder / "Sports_and_Outdoors_item2attributes.json").write_text(json.dumps({"1": [1, 2, 2], "3": [2]}))
    cfg = DataConfig(format="p5", path=str(folder), kcore=0)
    ds = prepare(load_raw(cfg), cfg)
    assert ds.items.to_dict("list") == {"item_id": ["B01", "B02", "B03"], "attributes": ["Nike, Shoes", "", "Shoes"]}
    assert ds.default_template == "Attributes: {attributes}"
    assert ds.source["paths"]["item2attributes"].endswith("Sports_and_Outdoors_item2attributes.json")
    assert not caplog.records

    # without id2attribute the ids are the only text there is, and that is said
    (folder / "datamaps.json").write_text(
        json.dumps({"id2user": {"1": "AU1", "2": "AU2"}, "id2item": {"1": "B01", "2": "B02", "3": "B03"}})
    )
    with caplog.at_level("WARNING", logger="genrec.data.loaders"):
        raw = load_raw(cfg)
    assert raw.items["attributes"].tolist() == ["#1, #2", "#2"]
    assert "id2attribute" in caplog.text and "collab" in caplog.text

    # two attribute files: data.name picks one
    (folder / "Beauty_item2attributes.json").write_text(json.dumps({"2": [1]}))
    with pytest.raises(GenrecError, match="several S3-Rec"):
        load_raw(cfg)
    assert load_raw(DataConfig(format="p5", path=str(folder), name="Beauty")).items["item_id"].tolist() == ["B02"]


def test_p5_amazon_meta_as_p5_ships_it(tmp_path):
    import gzip

    folder = _p5_folder(tmp_path)
    # P5's meta.json.gz: Python dict literals, one a line (read with eval by P5); 2018 files are JSON
    lines = [
        repr(
            {
                "asin": "B01",
                "title": "Trail Runner",
                "brand": "Nike",
                "categories": [["Sports", "Shoes"]],
                "related": {"also_bought": ["B02"]},
            }
        ),
        repr({"asin": "X99", "title": "not in the data", "categories": [["Sports"]]}),
        json.dumps({"asin": "B02", "title": "Ball", "category": ["Sports", "Balls"], "description": ["Round."]}),
    ]
    with gzip.open(folder / "meta.json.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    # the richer meta file wins over S3-Rec's attribute ids
    (folder / "Sports_item2attributes.json").write_text(json.dumps({"1": [1]}))
    cfg = DataConfig(format="p5", path=str(folder), kcore=0)
    ds = prepare(load_raw(cfg), cfg)
    assert ds.text_fields == ["title", "brand", "categories", "description"]
    assert ds.items.to_dict("records") == [
        {"item_id": "B01", "title": "Trail Runner", "brand": "Nike", "categories": "Sports, Shoes", "description": ""},
        {"item_id": "B02", "title": "Ball", "brand": "", "categories": "Sports, Balls", "description": "Round."},
        {"item_id": "B03", "title": "", "brand": "", "categories": "", "description": ""},
    ]
    assert ds.source["paths"]["meta"].endswith("meta.json.gz")

    with gzip.open(folder / "meta.json.gz", "wt", encoding="utf-8") as f:
        f.write(lines[0] + "\n{'asin': 'B02', 'title': \n")
    with pytest.raises(GenrecError, match=r"meta.json.gz line 2 is neither JSON nor a Python dict literal"):
        load_raw(cfg)


def test_p5_without_item_text_loads_and_says_so(tmp_path, caplog):
    folder = _p5_folder(tmp_path)
    cfg = DataConfig(format="p5", path=str(folder), kcore=0)
    with caplog.at_level("WARNING", logger="genrec.data.loaders"):
        ds = prepare(load_raw(cfg), cfg)
    assert ds.split("test") == [("AU1", ["B01", "B02"], "B03"), ("AU2", ["B02", "B03"], "B01")]
    assert ds.text_fields == [] and ds.stats()["items_without_text"] == 3
    assert "no item text" in caplog.text and "tokenize.embedding.source: collab" in caplog.text


# --------------------------------------------------------------------------- bad input


def _write(path: Path, text: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return str(path)


MOVIES = "1::A (2000)::Drama\n2::B (2001)::Comedy\n"


def _bad_cases(tmp: Path) -> dict[str, tuple[dict, list[str]]]:
    """name -> (data section, fragments the message must contain)."""
    good = "\n".join(f"{u}::{i}::5::{u * 10 + i}" for u in (1, 2, 3) for i in (1, 2)) + "\n"
    _write(tmp / "bad_line" / "movies.dat", MOVIES)
    _write(tmp / "bad_line" / "ratings.dat", good + "4::1::5\n")
    _write(tmp / "bad_ts" / "movies.dat", MOVIES)
    _write(tmp / "bad_ts" / "ratings.dat", "1::1::5::100\n1::2::5::yesterday\n")
    _write(tmp / "no_movies" / "ratings.dat", good)
    _write(tmp / "json" / "Sci.inter.json", '{"0": [1, 2, 3],\n "1": [1, 2 3]}')
    _write(tmp / "json" / "Sci.item.json", "{}")
    csv = _write(tmp / "t.csv", "user,item,ts\nu,a,1\nu,b,2\nu,c,3\n")
    header = "user_id:token\titem_id:token\ttimestamp:float\n"
    _write(tmp / "rb_line" / "d.inter", header + "u\ta\t1\nu\tb\n")
    _write(tmp / "rb_ts" / "d.inter", header + "u\ta\t1\nu\tb\tsoon\n")
    _write(tmp / "rb_col" / "d.inter", "user_id:token\titem_id:token\trating:float\nu\ta\t1\n")
    _write(tmp / "rb_head" / "d.inter", "user_id\titem_id\nu\ta\n")
    _write(tmp / "s3" / "sequential_data.txt", "1 1 2\n")
    _write(tmp / "s3" / "datamaps.json", json.dumps({"id2user": {"1": "U"}, "id2item": {"1": "A", "2": "B"}}))
    _write(tmp / "s3" / "Toys_item2attributes.json", json.dumps({"1": [1], "7": [2]}))
    return {
        "missing file": (dict(format="table", path=str(tmp / "nope.csv")), ["not found", "nope.csv"]),
        "missing movies file": (
            dict(format="movietweetings", path=str(tmp / "no_movies")),
            ["movies file not found", "movies.dat"],
        ),
        "malformed line": (
            dict(format="movielens", path=str(tmp / "bad_line")),
            ["ratings.dat line 7", "expected 4 fields", "user::item::rating::timestamp"],
        ),
        "bad timestamp": (
            dict(format="movietweetings", path=str(tmp / "bad_ts")),
            ["ratings.dat line 2", "'yesterday'", "not an integer"],
        ),
        "malformed json": (
            dict(format="lcrec", path=str(tmp / "json")),
            ["Sci.inter.json is not valid JSON at line 2"],
        ),
        "unknown format": (dict(format="csv", path=csv), ["unknown data.format 'csv'", "table", "movielens"]),
        "empty after k-core": (
            dict(format="table", path=csv, user_col="user", item_col="item", time_col="ts", kcore=5),
            ["empty after 5-core filtering (1 users, 3 items before)", "lower data.kcore"],
        ),
        "missing column": (
            dict(format="table", path=csv, user_col="uid", item_col="item", time_col="ts"),
            ["column 'uid'", "t.csv", "user, item, ts", "data.user_col"],
        ),
        "no path": (dict(format="p5"), ["data.path is not set"]),
        "lcrec name": (dict(format="lcrec", path=str(tmp / "json"), name="Beauty"), ["no Beauty.inter.json", "Sci"]),
        "recbole malformed line": (
            dict(format="recbole", path=str(tmp / "rb_line")),
            ["d.inter line 3", "expected 3 tab-separated fields", "user_id:token<TAB>item_id:token", "got 2"],
        ),
        "recbole bad timestamp": (
            dict(format="recbole", path=str(tmp / "rb_ts")),
            ["d.inter line 3", "'timestamp'", "'soon'", "not a number"],
        ),
        "recbole missing column": (
            dict(format="recbole", path=str(tmp / "rb_col")),
            ["field 'timestamp' (data.time_col)", "d.inter", "rating:float", "null to use file order"],
        ),
        "recbole untyped header": (
            dict(format="recbole", path=str(tmp / "rb_head")),
            ["d.inter line 1", "'user_id' is not `name:type`", "user_id:token<TAB>"],
        ),
        "p5 attribute item not in datamaps": (
            dict(format="p5", path=str(tmp / "s3")),
            ["Toys_item2attributes.json: item '7' is not in id2item", "datamaps.json"],
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "missing file",
        "missing movies file",
        "malformed line",
        "bad timestamp",
        "malformed json",
        "unknown format",
        "empty after k-core",
        "missing column",
        "no path",
        "lcrec name",
        "recbole malformed line",
        "recbole bad timestamp",
        "recbole missing column",
        "recbole untyped header",
        "p5 attribute item not in datamaps",
    ],
)
def test_bad_input_is_a_clear_error_and_leaves_run_intact(tmp_path, case):
    run = tmp_path / "run"
    # a good earlier data stage that a failed prepare must not touch
    good = _write(tmp_path / "good.csv", "user,item,ts\nu,a,1\nu,b,2\nu,c,3\n")
    prepare_stage(_cfg(run, format="table", path=good, user_col="user", item_col="item", time_col="ts", kcore=0))
    before = {p.name: p.read_bytes() for p in (run / "data").iterdir()}
    manifest = (run / "manifest.json").read_text()

    data, fragments = _bad_cases(tmp_path / "inputs")[case]
    with pytest.raises(GenrecError) as e:
        prepare_stage(_cfg(run, **data))
    msg = str(e.value)
    assert "\n" not in msg and e.value.fix, msg
    for frag in fragments:
        assert frag in msg, (frag, msg)
    assert {p.name: p.read_bytes() for p in (run / "data").iterdir()} == before
    assert (run / "manifest.json").read_text() == manifest
    assert _stage_leftovers(run) == []


def test_failed_first_prepare_creates_no_stage(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(GenrecError):
        prepare_stage(_cfg(run, format="movielens", path=str(tmp_path / "missing")))
    assert not (run / "data").exists() and _stage_leftovers(run) == []


def test_unknown_format_lists_valid_ones():
    with pytest.raises(GenrecError) as e:
        load_raw(DataConfig(format="parquet"))
    for fmt in FORMATS:
        assert fmt in str(e.value)
