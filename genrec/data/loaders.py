"""Raw loaders: one function per input format, each returning :class:`RawData`.

A loader only *reads*: it turns files into an interaction table and an item table
with text, and records where they came from. Filtering, ordering and splitting
happen in :mod:`genrec.data.dataset`, the same way for every format.

Everything a user can get wrong (a missing file, a malformed line, a key that is
not in a map, a missing column) is raised as :class:`~genrec.errors.InputError`
naming the file, the line or key, and the fix -- never as a pandas or json trace.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, get_args, get_type_hints

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from genrec.config import DataConfig
from genrec.errors import InputError
from genrec.runs import sha256_file

logger = logging.getLogger(__name__)

#: The valid values of ``data.format``.
#: The input formats (the choices of ``data.format``, checked when the config is loaded).
FORMATS: tuple[str, ...] = get_args(get_type_hints(DataConfig)["format"])

#: Package that holds the bundled MovieTweetings files.
BUNDLED_PACKAGE = "genrec.data.bundled"
BUNDLED_FILES = ("interactions.parquet", "items.parquet")
BUNDLED_ORIGIN = (
    "MovieTweetings 100K snapshot (16,554 users, 10,506 items, 100,000 ratings; MIT, "
    "Dooms et al. 2013), iterative 5-core by tools/build_bundled.py"
)

LCREC_FIELDS = ("title", "description", "brand", "categories")

_TEXT_EXTENSIONS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
_PARQUET_EXTENSIONS = (".parquet", ".pq")


@dataclass
class RawData:
    """Interactions and item text as read from the input, before any filtering.

    Attributes:
        interactions: columns ``user_id`` (str), ``item_id`` (str), ``timestamp``
            (int64; the position in the user's list for formats without time) and,
            where the input has one, ``rating`` (float64). Rows are in file order,
            which breaks timestamp ties later.
        items: ``item_id`` (str) plus one str column per text field (missing -> "").
        text_fields: the text columns of ``items``, in display order.
        default_template: a Python format string over ``text_fields``.
        source: ``format``, ``paths`` (role -> path) and ``sha256`` (role -> hash).
    """

    interactions: pd.DataFrame
    items: pd.DataFrame
    text_fields: list[str]
    default_template: str
    source: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers


def _require_file(path: Path, what: str, fix: str) -> Path:
    if path.is_dir():
        raise InputError(f"{what} {path} is a folder, not a file", fix)
    if not path.is_file():
        raise InputError(f"{what} not found: {path}", fix)
    return path


def _require_dir(path: Path, what: str, fix: str) -> Path:
    if path.is_file():
        raise InputError(f"{what} {path} is a file, not a folder", fix)
    if not path.is_dir():
        raise InputError(f"{what} not found: {path}", fix)
    return path


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path} ({e.strerror or e})", "check the file's permissions") from None


def _decode(data: bytes, path: Path, encodings: tuple[str, ...] = ("utf-8",)) -> str:
    """Text of a file; names the line of the first undecodable byte if no encoding fits."""
    first_error: UnicodeDecodeError | None = None
    for enc in encodings:
        try:
            text = data.decode(enc)
            # a UTF-8 byte-order mark would otherwise end up in the first id
            return text[1:] if text.startswith("\ufeff") else text
        except UnicodeDecodeError as e:
            first_error = first_error or e
    assert first_error is not None
    line = data.count(b"\n", 0, first_error.start) + 1
    raise InputError(f"{path} line {line} is not valid {'/'.join(encodings)} text", "save the file as UTF-8") from None


def _read_json(path: Path) -> Any:
    text = _decode(_read_bytes(path), path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(
            f"{path} is not valid JSON at line {e.lineno}, column {e.colno} ({e.msg})",
            "fix the file or produce it again",
        ) from None


def _expect_mapping(obj: Any, path: Path, what: str) -> dict:
    if not isinstance(obj, dict):
        raise InputError(
            f"{path} must hold a JSON object ({what}), got {type(obj).__name__}", "check that this is the right file"
        )
    return obj


def _short(line: str, n: int = 60) -> str:
    return repr(line if len(line) <= n else line[:n] + "...")


def _text(value: Any) -> str:
    """A text field value as str: missing -> "", lists joined with ", "."""
    if value is None:
        return ""
    if isinstance(value, float) and np.isnan(value):
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(t for t in (_text(v) for v in value) if t)
    return str(value)


def _sources(fmt: str, files: dict[str, Path], **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "format": fmt,
        "paths": {k: str(p) for k, p in files.items()},
        "sha256": {k: sha256_file(p) for k, p in files.items()},
    }
    out.update(extra)
    return out


def _interactions(users: list[str], items: list[str], timestamps: Any, ratings: Any | None = None) -> pd.DataFrame:
    df = pd.DataFrame(
        {
            "user_id": pd.Series(users, dtype=object),
            "item_id": pd.Series(items, dtype=object),
            "timestamp": np.asarray(timestamps, dtype=np.int64),
        }
    )
    if ratings is not None:
        df["rating"] = np.asarray(ratings, dtype=np.float64)
    return df


def _item_table(ids: list[str], fields: dict[str, list[Any]]) -> pd.DataFrame:
    df = pd.DataFrame({"item_id": pd.Series(ids, dtype=object)})
    for name, values in fields.items():
        df[name] = pd.Series([_text(v) for v in values], dtype=object)
    return df


def _positions(users: list[str]) -> np.ndarray:
    """Position of each row within its user's list (the timestamp of untimed formats)."""
    codes, _ = pd.factorize(pd.Series(users, dtype=object))
    return pd.Series(codes).groupby(codes).cumcount().to_numpy(dtype=np.int64)


def _nonempty(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    if df.empty:
        raise InputError(f"no interactions in {path}", "point data.path at a file with interactions")
    return df


# --------------------------------------------------------------------------- `::` files


def read_colon_file(
    path: Path, n_fields: int, layout: str, encodings: tuple[str, ...] = ("utf-8",)
) -> tuple[list[list[str]], list[int]]:
    """Split a MovieLens-style ``a::b::c`` file into fields.

    Every line must have exactly ``n_fields`` fields; in a 3-field line (``movies.dat``)
    the middle field, the title, may itself contain ``::``.

    Returns (rows, line numbers), skipping blank lines. A line with the wrong number
    of fields is an InputError naming the file, the line and the expected ``layout``.
    """
    text = _decode(_read_bytes(path), path, encodings)
    rows: list[list[str]] = []
    numbers: list[int] = []
    for no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        if n_fields == 3:
            # titles may contain "::" in principle; id is first, genres last
            head, sep, rest = line.partition("::")
            middle, sep2, tail = rest.rpartition("::")
            parts = [head, middle, tail] if sep and sep2 else line.split("::")
        else:
            parts = line.split("::")
        if len(parts) != n_fields:
            raise InputError(
                f"{path} line {no}: expected {n_fields} fields `{layout}`, got {len(parts)}: {_short(line)}",
                "fix or remove that line",
            )
        rows.append(parts)
        numbers.append(no)
    return rows, numbers


def _numeric(values: list[str], numbers: list[int], path: Path, what: str, layout: str, integer: bool) -> np.ndarray:
    """Parse a column of a `::` file; a bad value names its line."""
    s = pd.to_numeric(pd.Series(values, dtype=object).str.strip(), errors="coerce")
    bad = s.isna().to_numpy()
    if integer and not bad.all():
        bad = bad | ((s.to_numpy(dtype=np.float64, na_value=0.0) % 1) != 0)
    if bad.any():
        i = int(np.argmax(bad))
        kind = "an integer" if integer else "a number"
        raise InputError(
            f"{path} line {numbers[i]}: {what} {values[i]!r} is not {kind} (`{layout}`)", "fix or remove that line"
        )
    return s.to_numpy(dtype=np.int64 if integer else np.float64)


RATINGS_LAYOUT = "user::item::rating::timestamp"
MOVIES_LAYOUT = "item::title::genre|genre"


def load_colon_ratings(ratings: Path, movies: Path, fmt: str, encodings: tuple[str, ...] = ("utf-8",)) -> RawData:
    """MovieLens-style ``ratings.dat`` + ``movies.dat`` (MovieTweetings uses the same layout).

    Every rating is an interaction, whatever its value. Ids are kept as the strings in
    the file (MovieTweetings' IMDb ids have leading zeros that matter). Genres
    ``A|B`` become ``"A, B"``.
    """
    rows, numbers = read_colon_file(ratings, 4, RATINGS_LAYOUT, encodings)
    if not rows:
        raise InputError(
            f"no interactions in {ratings}", f"point data.path at a ratings file with lines `{RATINGS_LAYOUT}`"
        )
    users, items, rating_s, ts_s = (list(c) for c in zip(*rows))
    inter = _interactions(
        [u.strip() for u in users],
        [i.strip() for i in items],
        _numeric(ts_s, numbers, ratings, "timestamp", RATINGS_LAYOUT, integer=True),
        _numeric(rating_s, numbers, ratings, "rating", RATINGS_LAYOUT, integer=False),
    )
    mrows, _ = read_colon_file(movies, 3, MOVIES_LAYOUT, encodings)
    ids = [r[0].strip() for r in mrows]
    genres = [", ".join(g.strip() for g in r[2].split("|") if g.strip()) for r in mrows]
    item_df = _item_table(ids, {"title": [r[1].strip() for r in mrows], "genres": genres})
    return RawData(
        inter,
        item_df,
        ["title", "genres"],
        "{title}. Genres: {genres}",
        _sources(fmt, {"ratings": ratings, "movies": movies}),
    )


def _colon_paths(path: Path, items_path: Path | None, fmt: str) -> tuple[Path, Path]:
    """(ratings, movies) from a folder or a ratings file, plus an optional movies override."""
    fix = f"set data.path to a folder with ratings.dat and movies.dat ({fmt} layout)"
    if path.is_dir():
        ratings = _require_file(path / "ratings.dat", "ratings file", fix)
        folder = path
    else:
        ratings = _require_file(path, "ratings file", fix)
        folder = path.parent
    if items_path is not None:
        movies = _require_file(items_path, "movies file (data.items_path)", "fix data.items_path")
    else:
        movies = _require_file(
            folder / "movies.dat", "movies file", "put movies.dat beside ratings.dat or set data.items_path"
        )
    return ratings, movies


def load_movietweetings(path: Path, items_path: Path | None = None) -> RawData:
    """MovieTweetings: ``ratings.dat`` (``user::imdb::rating::ts``) + ``movies.dat`` (UTF-8).

    ``path`` is the folder (or the ratings file); ``items_path`` overrides the movies file.
    """
    ratings, movies = _colon_paths(path, items_path, "movietweetings")
    return load_colon_ratings(ratings, movies, "movietweetings")


def load_movielens(path: Path, items_path: Path | None = None) -> RawData:
    """MovieLens ``::`` files: ``ratings.dat`` + ``movies.dat`` (or ``items_path``).

    MovieLens 1M ships its movies file in Latin-1, so Latin-1 is tried when the file
    is not UTF-8.
    """
    ratings, movies = _colon_paths(path, items_path, "movielens")
    return load_colon_ratings(ratings, movies, "movielens", encodings=("utf-8", "latin-1"))


# --------------------------------------------------------------------------- bundled


def load_bundled() -> RawData:
    """The MovieTweetings 100K demo set (5-core) shipped inside the package.

    Built by ``tools/build_bundled.py``; see ``genrec/data/bundled/README.md``.
    """
    root = resources.files(BUNDLED_PACKAGE)
    tables: dict[str, pd.DataFrame] = {}
    hashes: dict[str, str] = {}
    for name in BUNDLED_FILES:
        ref = root.joinpath(name)
        if not ref.is_file():
            raise InputError(
                f"the bundled data file {name} is missing from the installed package",
                "reinstall genrec (`make install`) or run `python tools/build_bundled.py`",
            )
        data = ref.read_bytes()
        hashes[name] = hashlib.sha256(data).hexdigest()
        tables[name] = pq.read_table(pa.BufferReader(data)).to_pandas()
    inter = tables["interactions.parquet"]
    inter = _interactions(
        inter["user_id"].astype(str).tolist(),
        inter["item_id"].astype(str).tolist(),
        inter["timestamp"],
        inter["rating"],
    )
    it = tables["items.parquet"]
    items = _item_table(
        it["item_id"].astype(str).tolist(), {"title": it["title"].tolist(), "genres": it["genres"].tolist()}
    )
    # package-relative names, so the manifest is the same wherever the package lives
    source = {
        "format": "bundled",
        "paths": {n.split(".")[0]: f"{BUNDLED_PACKAGE}/{n}" for n in BUNDLED_FILES},
        "sha256": {n.split(".")[0]: hashes[n] for n in BUNDLED_FILES},
        "derived_from": BUNDLED_ORIGIN,
    }
    return RawData(inter, items, ["title", "genres"], "{title}. Genres: {genres}", source)


# --------------------------------------------------------------------------- P5

P5_LAYOUT = "user item item ..."
#: Amazon metadata fields kept as item text (P5's meta.json.gz, the Amazon 2014/2018 meta files)
META_FIELDS = ("title", "brand", "categories", "description")
_META_ASIN = re.compile(r"""["']asin["']\s*:\s*["']([^"']*)["']""")


def _p5_sequences(
    folder: Path, id2user: dict[str, str], id2item: dict[str, str], maps_path: Path
) -> tuple[pd.DataFrame, Path]:
    seq_path = folder / "sequential_data.txt"
    users: list[str] = []
    items: list[str] = []
    text = _decode(_read_bytes(seq_path), seq_path)
    for no, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise InputError(
                f"{seq_path} line {no}: expected `{P5_LAYOUT}`, got {_short(line)}", "fix or remove that line"
            )
        user = id2user.get(parts[0])
        if user is None:
            raise InputError(
                f"{seq_path} line {no}: user {parts[0]!r} is not in id2user of {maps_path}",
                "use the sequential_data.txt and datamaps.json of the same P5 release",
            )
        for tok in parts[1:]:
            asin = id2item.get(tok)
            if asin is None:
                raise InputError(
                    f"{seq_path} line {no}: item {tok!r} is not in id2item of {maps_path}",
                    "use the sequential_data.txt and datamaps.json of the same P5 release",
                )
            items.append(asin)
        users.extend([user] * (len(parts) - 1))
    return _nonempty(_interactions(users, items, _positions(users)), seq_path), seq_path


def _p5_rebuilt_attributes(attr_path: Path, id2item: dict[str, str]) -> pd.DataFrame:
    """genrec's ``item_attributes.json``: item number -> ``{asin, attributes: [name, ...]}``."""
    attrs = _expect_mapping(_read_json(attr_path), attr_path, "item number -> {asin, attributes}")
    ids: list[str] = []
    names: list[Any] = []
    for num, rec in attrs.items():
        if not isinstance(rec, dict):
            raise InputError(
                f"{attr_path}: item {num!r} must map to {{asin, attributes}}, got {type(rec).__name__}",
                "use the item_attributes.json made for P5",
            )
        # the map's ASIN is the id used in interactions; the record's own is a fallback
        asin = id2item.get(str(num)) or rec.get("asin")
        if not asin:
            raise InputError(
                f"{attr_path}: item {num!r} has no ASIN (not in id2item, no 'asin' key)",
                "use the item_attributes.json made for this datamaps.json",
            )
        ids.append(str(asin))
        names.append(rec.get("attributes") or [])
    return _item_table(ids, {"attributes": names})


def _s3rec_attributes(path: Path, id2item: dict[str, str], maps: dict, maps_path: Path) -> pd.DataFrame:
    """S3-Rec's ``<Name>_item2attributes.json``: item number -> [attribute id, ...].

    The names come from ``id2attribute`` of datamaps.json (P5's maps carry S3-Rec's attribute
    maps); without it the ids themselves (``#12``) are all the text there is.
    """
    raw = _expect_mapping(_read_json(path), path, "item number -> [attribute id, ...]")
    id2attr = maps.get("id2attribute")
    if not isinstance(id2attr, dict):
        id2attr = None
        logger.warning(
            "%s has no id2attribute map, so the attributes of %s have no names: item text is "
            "attribute ids (#12, ...); tokenize.embedding.source: collab (or both) is the better choice",
            maps_path,
            path.name,
        )
    ids: list[str] = []
    names: list[list[str]] = []
    for num, attr_ids in raw.items():
        if not isinstance(attr_ids, list):
            raise InputError(
                f"{path}: item {num!r} must map to a list of attribute ids, got {_short(str(attr_ids))}",
                "use the *_item2attributes.json made by S3-Rec's data_process.py",
            )
        asin = id2item.get(str(num))
        if asin is None:
            raise InputError(
                f"{path}: item {num!r} is not in id2item of {maps_path}",
                "use the *_item2attributes.json made for this datamaps.json (the same S3-Rec/P5 dataset)",
            )
        words: list[str] = []
        for a in attr_ids:
            if id2attr is None:
                word = f"#{a}"
            else:
                word = id2attr.get(str(a))
                if word is None:
                    raise InputError(
                        f"{path}: item {num!r} has attribute {a!r}, which is not in id2attribute of {maps_path}",
                        "use the datamaps.json and *_item2attributes.json of the same dataset",
                    )
            if word not in words:  # S3-Rec's lists repeat category names
                words.append(str(word))
        ids.append(asin)
        names.append(words)
    return _item_table(ids, {"attributes": names})


def _meta_record(line: str) -> Any:
    """One line of an Amazon meta file: JSON (2018) or a Python dict literal (2014, P5's meta.json.gz)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return ast.literal_eval(line)


def _meta_categories(value: Any) -> list[str]:
    """Amazon ``categories``: [[top, sub, ...], ...] (2014) or [top, sub, ...] (2018), flattened, unique."""
    flat: list[str] = []
    for entry in value if isinstance(value, list) else [value]:
        for name in entry if isinstance(entry, list) else [entry]:
            text = _text(name).strip()
            if text and text not in flat:
                flat.append(text)
    return flat


def _amazon_meta(path: Path, asins: set[str]) -> pd.DataFrame:
    """The records of ``asins`` in an Amazon meta file (one record a line, optionally gzipped).

    Read line by line (a whole category's meta file is hundreds of MB); lines of other items
    are skipped without being parsed.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    found: dict[str, dict] = {}
    no = 0
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for no, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                m = _META_ASIN.search(line)
                if m is not None and m.group(1) not in asins:
                    continue
                try:
                    rec = _meta_record(line)
                except (ValueError, SyntaxError, MemoryError, RecursionError):
                    raise InputError(
                        f"{path} line {no} is neither JSON nor a Python dict literal: {_short(line.strip())}",
                        "fix or remove that line (Amazon meta files hold one record a line)",
                    ) from None
                if not isinstance(rec, dict) or not rec.get("asin"):
                    raise InputError(
                        f"{path} line {no}: a record without 'asin': {_short(line.strip())}", "fix or remove that line"
                    )
                if str(rec["asin"]) in asins:
                    found.setdefault(str(rec["asin"]), rec)
    except UnicodeDecodeError:
        raise InputError(f"{path} line {no + 1} is not valid UTF-8 text", "save the file as UTF-8") from None
    except (OSError, EOFError) as e:
        raise InputError(f"cannot read {path} ({e})", "download the file again") from None
    ids = list(found)
    fields: dict[str, list[Any]] = {f: [found[i].get(f) for i in ids] for f in META_FIELDS}
    fields["categories"] = [_meta_categories(found[i].get("categories") or found[i].get("category")) for i in ids]
    return _item_table(ids, fields)


def _p5_pick(folder: Path, pattern: str, name: str | None, what: str) -> Path | None:
    """The one file matching ``pattern`` (``<name>...`` when ``data.name`` is set), or None."""
    found = sorted(folder.glob(pattern))
    if name is not None:
        found = [p for p in found if p.name.startswith(f"{name}_") or p.name.startswith(f"meta_{name}")] or found
    if len(found) > 1:
        listing = ", ".join(p.name for p in found)
        raise InputError(f"{folder} holds several {what} files ({listing})", "pick one with data.name")
    return found[0] if found else None


def load_p5(path: Path, name: str | None = None) -> RawData:
    """Amazon data as preprocessed by P5, with the files its public releases ship.

    ``sequential_data.txt`` (``user item item ...`` in time order) and ``datamaps.json``
    (``id2user``, ``id2item``) are required. Users and items get their original ids
    (reviewer id, ASIN) because P5's numbers were assigned by first appearance and so leak
    order. Item text comes from the first of these that the folder holds:

    1. ``item_attributes.json`` (item number -> ``{asin, attributes}``, genrec's rebuilt file);
    2. an Amazon metadata file, ``meta.json.gz`` as P5 ships it (or ``meta.json``,
       ``meta_<Category>.json[.gz]``): title, brand, categories, description;
    3. S3-Rec's ``<Name>_item2attributes.json`` (item number -> attribute ids), named through
       ``id2attribute`` of datamaps.json: brand and category names;
    4. nothing: the items have no text, which is logged; ``tokenize.embedding.source: collab``
       makes IDs from the interactions alone.

    ``name`` picks among several ``<Name>_item2attributes.json`` / ``meta_<Name>`` files.
    """
    fix = "set data.path to a P5 folder with sequential_data.txt and datamaps.json"
    folder = _require_dir(path, "P5 folder", fix)
    seq_path = _require_file(folder / "sequential_data.txt", "P5 sequence file", fix)
    maps_path = _require_file(folder / "datamaps.json", "P5 id map", fix)

    maps = _expect_mapping(_read_json(maps_path), maps_path, "P5 datamaps")
    for key in ("id2user", "id2item"):
        if not isinstance(maps.get(key), dict):
            raise InputError(f"{maps_path} has no '{key}' map", "use the datamaps.json made by P5")
    id2user: dict[str, str] = maps["id2user"]
    id2item: dict[str, str] = {str(k): str(v) for k, v in maps["id2item"].items()}
    inter, seq_path = _p5_sequences(folder, id2user, id2item, maps_path)
    files = {"sequences": seq_path, "datamaps": maps_path}

    rebuilt = folder / "item_attributes.json"
    meta = next((p for p in (folder / "meta.json.gz", folder / "meta.json") if p.is_file()), None)
    meta = meta or _p5_pick(folder, "meta_*.json*", name, "Amazon meta")
    s3rec = _p5_pick(folder, "*item2attributes.json", name, "S3-Rec *_item2attributes.json")
    if rebuilt.is_file():
        items = _p5_rebuilt_attributes(rebuilt, id2item)
        fields, template, files["item_attributes"] = ["attributes"], "Attributes: {attributes}", rebuilt
    elif meta is not None:
        items = _amazon_meta(meta, set(id2item.values()))
        fields, files["meta"] = list(META_FIELDS), meta
        template = "{title}. Brand: {brand}. Categories: {categories}. {description}"
    elif s3rec is not None:
        items = _s3rec_attributes(s3rec, id2item, maps, maps_path)
        fields, template, files["item2attributes"] = ["attributes"], "Attributes: {attributes}", s3rec
    else:
        logger.warning(
            "%s has no item text (no item_attributes.json, meta.json.gz or *_item2attributes.json): the items "
            "load without text, so set tokenize.embedding.source: collab (semantic IDs from the interactions)",
            folder,
        )
        items = pd.DataFrame({"item_id": pd.Series([], dtype=object)})
        fields, template = [], ""
    return RawData(inter, items, fields, template, _sources("p5", files))


# --------------------------------------------------------------------------- LC-Rec


def _lcrec_name(folder: Path, name: str | None) -> str:
    found = sorted(p.name[: -len(".inter.json")] for p in folder.glob("*.inter.json"))
    if name is not None:
        if name not in found:
            listing = ", ".join(found) if found else "none"
            raise InputError(
                f"no {name}.inter.json in {folder} (datasets there: {listing})", "fix data.name or data.path"
            )
        return name
    if not found:
        raise InputError(
            f"no *.inter.json file in {folder}",
            "set data.path to an LC-Rec folder with <Name>.inter.json and <Name>.item.json",
        )
    if len(found) > 1:
        raise InputError(f"{folder} holds several LC-Rec datasets ({', '.join(found)})", "pick one with data.name")
    return found[0]


def load_lcrec(path: Path, name: str | None = None) -> RawData:
    """LC-Rec: ``<Name>.inter.json`` ({user: [item, ...]} in time order) + ``<Name>.item.json``.

    Ids are the index strings of the files. ``path`` may also be the ``.inter.json``
    file itself.
    """
    if path.is_file() and path.name.endswith(".inter.json"):
        folder, name = path.parent, path.name[: -len(".inter.json")]
    else:
        folder = _require_dir(
            path, "LC-Rec folder", "set data.path to a folder with <Name>.inter.json and <Name>.item.json"
        )
    name = _lcrec_name(folder, name)
    inter_path = folder / f"{name}.inter.json"
    item_path = _require_file(
        folder / f"{name}.item.json", "LC-Rec item file", f"put {name}.item.json beside {name}.inter.json"
    )

    seqs = _expect_mapping(_read_json(inter_path), inter_path, "user -> [item, ...]")
    users: list[str] = []
    items: list[str] = []
    for user, seq in seqs.items():
        if not isinstance(seq, list) or not all(isinstance(i, (int, str)) and not isinstance(i, bool) for i in seq):
            raise InputError(
                f"{inter_path}: user {user!r} must map to a list of item ids, got {_short(str(seq))}",
                "use the .inter.json made by LC-Rec",
            )
        users.extend([str(user)] * len(seq))
        items.extend(str(i) for i in seq)
    inter = _nonempty(_interactions(users, items, _positions(users)), inter_path)

    recs = _expect_mapping(_read_json(item_path), item_path, "item -> {title, description, ...}")
    fields = list(LCREC_FIELDS)
    for item, rec in recs.items():
        if not isinstance(rec, dict):
            raise InputError(
                f"{item_path}: item {item!r} must map to an object of text fields, got {type(rec).__name__}",
                "use the .item.json made by LC-Rec",
            )
        # keep any extra text fields a variant of the format may carry
        fields.extend(k for k in rec if k not in fields)
    item_df = _item_table([str(k) for k in recs], {f: [r.get(f) for r in recs.values()] for f in fields})
    # LC-Rec's preprocessing ends every title with "."; don't add a second one
    titles = [t for t in item_df["title"] if t]
    stop = "" if titles and all(t.rstrip().endswith((".", "!", "?")) for t in titles) else "."
    template = f"{{title}}{stop} Brand: {{brand}}. Categories: {{categories}}. {{description}}"
    return RawData(
        inter, item_df, fields, template, _sources("lcrec", {"interactions": inter_path, "items": item_path}, name=name)
    )


# --------------------------------------------------------------------------- generic table


def read_table(path: Path, sep: str | None, what: str) -> pd.DataFrame:
    """A CSV/TSV/Parquet file as a DataFrame (text files read as strings).

    ``.parquet``/``.pq`` files are Parquet; any other file is delimited text, split on
    ``sep`` or, when that is None, on the separator its extension implies.
    """
    fix = "set data.path (or data.items_path) to a .csv, .tsv or .parquet file"
    _require_file(path, what, fix)
    suffix = path.suffix.lower()
    if suffix in _PARQUET_EXTENSIONS:
        try:
            return pq.read_table(path).to_pandas()
        except (pa.ArrowException, OSError) as e:
            raise InputError(
                f"cannot read {path} as Parquet ({str(e).splitlines()[0]})",
                "check that the file is a complete Parquet file",
            ) from None
    if sep is None:
        if suffix not in _TEXT_EXTENSIONS:
            raise InputError(
                f"cannot tell the format of {path} from its extension {suffix or '(none)'!r}",
                "use .csv, .tsv or .parquet, or set data.sep for a delimited text file",
            )
        sep = _TEXT_EXTENSIONS[suffix]
    try:
        # strings throughout: ids keep leading zeros, and text is never turned into NaN
        return pd.read_csv(
            path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8", engine="c" if len(sep) == 1 else "python"
        )
    except UnicodeDecodeError:
        _decode(_read_bytes(path), path)  # raises with the line number
        raise
    except pd.errors.EmptyDataError:
        raise InputError(f"{path} is empty", "point data.path at a file with a header line and rows") from None
    except (pd.errors.ParserError, ValueError) as e:
        msg = " ".join(str(e).split())
        raise InputError(
            f"cannot parse {path} with separator {sep!r}: {msg}",
            "fix that line, or set data.sep to the file's separator",
        ) from None
    except OSError as e:
        raise InputError(f"cannot read {path} ({e.strerror or e})", "check the file's permissions") from None


def _need_columns(df: pd.DataFrame, path: Path, cols: list[tuple[str, str]]) -> None:
    for key, col in cols:
        if col not in df.columns:
            have = ", ".join(map(str, df.columns)) or "none"
            raise InputError(
                f"column {col!r} (data.{key}) not in {path}; its columns are: {have}",
                f"set data.{key} to one of those columns",
            )


def _id_column(s: pd.Series, path: Path, col: str) -> list[str]:
    """An id column as str; an empty id is an error naming its row."""
    values = s.astype(object)
    empty = values.isna().to_numpy() | (values.astype(str).str.strip() == "").to_numpy()
    if empty.any():
        row = int(np.argmax(empty))
        raise InputError(
            f"{path}: column {col!r} is empty in data row {row + 1} ({int(empty.sum())} empty in all)",
            "fill in or remove those rows",
        )
    if pd.api.types.is_float_dtype(s):
        # ids stored as floats in Parquet (1.0) read back as their integer text
        if (s % 1 == 0).all():
            return [str(int(v)) for v in s]
    return [str(v).strip() for v in values]


def _time_column(s: pd.Series, path: Path, col: str) -> np.ndarray:
    """Integer order keys from numbers or date strings."""
    if pd.api.types.is_datetime64_any_dtype(s):
        return s.astype("datetime64[ns]").astype(np.int64).to_numpy() // 1_000_000_000
    if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
        if s.isna().any():
            row = int(np.argmax(s.isna().to_numpy()))
            raise InputError(
                f"{path}: column {col!r} is empty in data row {row + 1}",
                "fill in or remove those rows, or set data.time_col: null",
            )
        if pd.api.types.is_float_dtype(s) and not (s % 1 == 0).all():
            # fractional seconds: keep their order by going to microseconds
            return np.round(s.to_numpy(dtype=np.float64) * 1e6).astype(np.int64)
        return s.to_numpy(dtype=np.int64)
    text = s.astype(str).str.strip()
    num = pd.to_numeric(text, errors="coerce")
    if not num.isna().any():
        return _time_column(num, path, col)
    dates = pd.to_datetime(text, errors="coerce", utc=True, format="mixed")
    if dates.isna().any():
        row = int(np.argmax(dates.isna().to_numpy()))
        raise InputError(
            f"{path}: column {col!r} has {text.iloc[row]!r} in data row {row + 1}, "
            "which is neither a number nor a date",
            "fix that value, or set data.time_col: null to use file order",
        )
    return dates.dt.tz_convert(None).astype("datetime64[ns]").astype(np.int64).to_numpy() // 1_000_000_000


def _table_template(fields: list[str]) -> str:
    if not fields:
        return ""
    parts = [f"{{{fields[0]}}}"] + [f"{f.replace('_', ' ').capitalize()}: {{{f}}}" for f in fields[1:]]
    return ". ".join(parts)


def load_table(path: Path, cfg: DataConfig, items_path: Path | None = None) -> RawData:
    """A generic interaction table (CSV/TSV/Parquet) and an optional item table.

    Columns come from ``cfg.user_col``, ``cfg.item_col`` and ``cfg.time_col`` (null:
    file order). The item file needs ``cfg.item_col`` and ``cfg.text_cols`` (all its
    other columns when ``text_cols`` is empty).
    """
    df = read_table(path, cfg.sep, "interaction table")
    cols = [("user_col", cfg.user_col), ("item_col", cfg.item_col)]
    if cfg.time_col is not None:
        cols.append(("time_col", cfg.time_col))
    _need_columns(df, path, cols)
    if df.empty:
        raise InputError(f"no interactions in {path}", "point data.path at a file with interaction rows")
    users = _id_column(df[cfg.user_col], path, cfg.user_col)
    items = _id_column(df[cfg.item_col], path, cfg.item_col)
    if cfg.time_col is None:
        ts = _positions(users)
    else:
        ts = _time_column(df[cfg.time_col], path, cfg.time_col)
    inter = _interactions(users, items, ts)
    files = {"interactions": path}

    fields: list[str] = []
    if items_path is not None:
        it = read_table(items_path, cfg.sep, "item table (data.items_path)")
        _need_columns(it, items_path, [("item_col", cfg.item_col)])
        fields = [str(c) for c in (cfg.text_cols or [c for c in it.columns if c != cfg.item_col])]
        _need_columns(it, items_path, [("text_cols", c) for c in fields])
        ids = _id_column(it[cfg.item_col], items_path, cfg.item_col)
        item_df = _item_table(ids, {f: it[f].tolist() for f in fields})
        files["items"] = items_path
    else:
        item_df = pd.DataFrame({"item_id": pd.Series([], dtype=object)})
    return RawData(inter, item_df, fields, _table_template(fields), _sources("table", files))


# --------------------------------------------------------------------------- RecBole


RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
RECBOLE_HEADER = "user_id:token<TAB>item_id:token<TAB>timestamp:float"


def read_atomic_file(path: Path) -> tuple[list[tuple[str, str]], dict[str, list[str]], list[int]]:
    """A RecBole atomic file: tab-separated, a header of ``name:type`` fields.

    Returns (fields as (name, type), column name -> values as str, line numbers of the rows),
    skipping blank lines. A header field without a known type, or a line with another number
    of fields than the header, is an InputError naming the file and the line.
    """
    text = _decode(_read_bytes(path), path)
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip()), None)
    if start is None:
        raise InputError(f"{path} is empty", f"a RecBole atomic file starts with a header like `{RECBOLE_HEADER}`")
    fields: list[tuple[str, str]] = []
    for col in lines[start].split("\t"):
        name, sep, typ = col.strip().rpartition(":")
        if not sep or not name or typ not in RECBOLE_TYPES:
            raise InputError(
                f"{path} line {start + 1}: header field {col.strip()!r} is not `name:type` with type "
                f"{', '.join(RECBOLE_TYPES)}",
                f"write the header as RecBole does, tab-separated, e.g. `{RECBOLE_HEADER}`",
            )
        if name in (f for f, _ in fields):
            raise InputError(f"{path} line {start + 1}: field {name!r} appears twice in the header", "rename one")
        fields.append((name, typ))
    n = len(fields)
    layout = "\t".join(f"{f}:{t}" for f, t in fields).replace("\t", "<TAB>")
    columns: list[list[str]] = [[] for _ in fields]
    numbers: list[int] = []
    for no, line in enumerate(lines[start + 1 :], start=start + 2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != n:
            raise InputError(
                f"{path} line {no}: expected {n} tab-separated fields `{layout}`, got {len(parts)}: {_short(line)}",
                "fix or remove that line (fields are separated by tabs, the tokens of a token_seq by spaces)",
            )
        for col, value in zip(columns, parts):
            col.append(value.strip())
        numbers.append(no)
    return fields, {f: col for (f, _), col in zip(fields, columns)}, numbers


def _recbole_need(fields: list[tuple[str, str]], path: Path, key: str, col: str, fix: str = "") -> None:
    names = [f for f, _ in fields]
    if col not in names:
        have = ", ".join(f"{f}:{t}" for f, t in fields)
        raise InputError(
            f"field {col!r} (data.{key}) not in the header of {path}; its fields are: {have}",
            fix or f"set data.{key} to one of those field names (without the :type)",
        )


def _recbole_ids(values: list[str], numbers: list[int], path: Path, col: str) -> list[str]:
    for v, no in zip(values, numbers):
        if not v:
            raise InputError(f"{path} line {no}: field {col!r} is empty", "fill in or remove that line")
    return values


def _recbole_numbers(values: list[str], numbers: list[int], path: Path, col: str) -> np.ndarray:
    s = pd.to_numeric(pd.Series(values, dtype=object), errors="coerce")
    bad = s.isna().to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(
            f"{path} line {numbers[i]}: field {col!r} is {values[i]!r}, not a number", "fix or remove that line"
        )
    return s.to_numpy(dtype=np.float64)


def _recbole_name(folder: Path, name: str | None) -> str:
    found = sorted(p.name[: -len(".inter")] for p in folder.glob("*.inter"))
    if name is not None:
        if name not in found:
            listing = ", ".join(found) if found else "none"
            raise InputError(f"no {name}.inter in {folder} (datasets there: {listing})", "fix data.name or data.path")
        return name
    if not found:
        raise InputError(
            f"no *.inter file in {folder}",
            "set data.path to a folder with RecBole atomic files <name>.inter (and optionally <name>.item)",
        )
    if len(found) > 1:
        raise InputError(f"{folder} holds several RecBole datasets ({', '.join(found)})", "pick one with data.name")
    return found[0]


def load_recbole(path: Path, cfg: DataConfig, items_path: Path | None = None) -> RawData:
    """RecBole atomic files: ``<name>.inter`` and, when present, ``<name>.item``.

    Tab-separated with a typed header (``user_id:token  item_id:token  rating:float
    timestamp:float``). ``path`` is the folder (``cfg.name`` picks the dataset when it holds
    several) or the ``.inter`` file. The user, item and time fields are ``cfg.user_col``,
    ``cfg.item_col`` and ``cfg.time_col`` (RecBole's own names by default; null: file
    order). Item text: ``cfg.text_cols`` of the ``.item`` file, or all its ``token`` and
    ``token_seq`` fields (a ``token_seq`` is kept as written: its tokens joined by spaces).
    ``items_path`` replaces ``<name>.item``.
    """
    if path.is_file():
        folder, name = path.parent, path.name[: -len(".inter")] if path.name.endswith(".inter") else path.stem
        inter_path = path
    else:
        folder = _require_dir(
            path, "RecBole folder", "set data.path to a folder with <name>.inter (and optionally <name>.item)"
        )
        name = _recbole_name(folder, cfg.name)
        inter_path = folder / f"{name}.inter"
    fields, cols, numbers = read_atomic_file(inter_path)
    _recbole_need(fields, inter_path, "user_col", cfg.user_col)
    _recbole_need(fields, inter_path, "item_col", cfg.item_col)
    if cfg.time_col is not None:
        _recbole_need(
            fields,
            inter_path,
            "time_col",
            cfg.time_col,
            "set data.time_col to one of those field names (without the :type), or null to use file order",
        )
    if not numbers:
        raise InputError(f"no interactions in {inter_path}", "point data.path at a file with interaction lines")
    users = _recbole_ids(cols[cfg.user_col], numbers, inter_path, cfg.user_col)
    items = _recbole_ids(cols[cfg.item_col], numbers, inter_path, cfg.item_col)
    if cfg.time_col is None:
        ts = _positions(users)
    else:
        t = _recbole_numbers(cols[cfg.time_col], numbers, inter_path, cfg.time_col)
        # fractional seconds keep their order as microseconds
        ts = t.astype(np.int64) if (t % 1 == 0).all() else np.round(t * 1e6).astype(np.int64)
    ratings = None
    if "rating" in cols and dict(fields)["rating"] == "float":
        ratings = _recbole_numbers(cols["rating"], numbers, inter_path, "rating")
    inter = _interactions(users, items, ts, ratings)
    files = {"interactions": inter_path}

    item_path = items_path if items_path is not None else folder / f"{name}.item"
    if items_path is not None:
        _require_file(items_path, "RecBole item file (data.items_path)", "fix data.items_path")
    text_fields: list[str] = []
    if item_path.is_file():
        ifields, icols, inumbers = read_atomic_file(item_path)
        _recbole_need(ifields, item_path, "item_col", cfg.item_col)
        text_fields = list(cfg.text_cols) or [f for f, t in ifields if f != cfg.item_col and t.startswith("token")]
        for f in text_fields:
            _recbole_need(ifields, item_path, "text_cols", f)
        ids = _recbole_ids(icols[cfg.item_col], inumbers, item_path, cfg.item_col)
        item_df = _item_table(ids, {f: icols[f] for f in text_fields})
        files["items"] = item_path
    else:
        item_df = pd.DataFrame({"item_id": pd.Series([], dtype=object)})
    return RawData(inter, item_df, text_fields, _table_template(text_fields), _sources("recbole", files, name=name))


# --------------------------------------------------------------------------- dispatch


def _resolve(p: str | None, base: Path | None) -> Path | None:
    if p is None:
        return None
    path = Path(os.path.expanduser(p))
    if not path.is_absolute() and base is not None:
        path = base / path
    # tidy `configs/../../x` for messages and manifests (no symlink resolution)
    return Path(os.path.normpath(path))


def load_raw(cfg: DataConfig, base: Path | None = None) -> RawData:
    """Read the data described by ``cfg`` (the ``data`` config section).

    Args:
        cfg: the data section; ``cfg.format`` picks the loader.
        base: folder that relative ``path``/``items_path`` are taken from (the config
            file's folder); None means the working directory.
    """
    if cfg.format == "bundled":
        return load_bundled()
    path = _resolve(cfg.path, base)
    if path is None:
        raise InputError(
            f"data.path is not set (needed for data.format: {cfg.format})",
            "set data.path to the file or folder with the data",
        )
    if not path.exists():
        raise InputError(
            f"data.path not found: {path}", "fix data.path (relative paths start at the config file's folder)"
        )
    items_path = _resolve(cfg.items_path, base)
    loaders: dict[str, Callable[[], RawData]] = {
        "movietweetings": lambda: load_movietweetings(path, items_path),
        "movielens": lambda: load_movielens(path, items_path),
        "p5": lambda: load_p5(path, cfg.name),
        "lcrec": lambda: load_lcrec(path, cfg.name),
        "table": lambda: load_table(path, cfg, items_path),
        "recbole": lambda: load_recbole(path, cfg, items_path),
    }
    return loaders[cfg.format]()
