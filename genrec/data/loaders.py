"""Raw loaders: one function per input format, each returning :class:`RawData`.

A loader only *reads*: it turns files into an interaction table and an item table
with text, and records where they came from. Filtering, ordering and splitting
happen in :mod:`genrec.data.dataset`, the same way for every format.

Everything a user can get wrong (a missing file, a malformed line, a key that is
not in a map, a missing column) is raised as :class:`~genrec.errors.GenrecError`
naming the file, the line or key, and the fix -- never as a pandas or json trace.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from genrec.config import DataConfig
from genrec.errors import GenrecError
from genrec.runs import sha256_file

#: The valid values of ``data.format``.
FORMATS = ("bundled", "movietweetings", "movielens", "p5", "lcrec", "table")

#: Package that holds the bundled MovieTweetings files.
BUNDLED_PACKAGE = "genrec.data.bundled"
BUNDLED_FILES = ("interactions.parquet", "items.parquet")
BUNDLED_ORIGIN = ("MovieTweetings 100K snapshot (16,554 users, 10,506 items, 100,000 ratings; MIT, "
                  "Dooms et al. 2013), iterative 5-core by tools/build_bundled.py")

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
        raise GenrecError(f"{what} {path} is a folder, not a file", fix)
    if not path.is_file():
        raise GenrecError(f"{what} not found: {path}", fix)
    return path


def _require_dir(path: Path, what: str, fix: str) -> Path:
    if path.is_file():
        raise GenrecError(f"{what} {path} is a file, not a folder", fix)
    if not path.is_dir():
        raise GenrecError(f"{what} not found: {path}", fix)
    return path


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise GenrecError(f"cannot read {path} ({e.strerror or e})", "check the file's permissions") from None


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
    raise GenrecError(f"{path} line {line} is not valid {'/'.join(encodings)} text",
                      "save the file as UTF-8") from None


def _read_json(path: Path) -> Any:
    text = _decode(_read_bytes(path), path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise GenrecError(f"{path} is not valid JSON at line {e.lineno}, column {e.colno} ({e.msg})",
                          "fix the file or produce it again") from None


def _expect_mapping(obj: Any, path: Path, what: str) -> dict:
    if not isinstance(obj, dict):
        raise GenrecError(f"{path} must hold a JSON object ({what}), got {type(obj).__name__}",
                          "check that this is the right file")
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
    out: dict[str, Any] = {"format": fmt, "paths": {k: str(p) for k, p in files.items()},
                           "sha256": {k: sha256_file(p) for k, p in files.items()}}
    out.update(extra)
    return out


def _interactions(users: list[str], items: list[str], timestamps: Any,
                  ratings: Any | None = None) -> pd.DataFrame:
    df = pd.DataFrame({"user_id": pd.Series(users, dtype=object),
                       "item_id": pd.Series(items, dtype=object),
                       "timestamp": np.asarray(timestamps, dtype=np.int64)})
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
        raise GenrecError(f"no interactions in {path}", "point data.path at a file with interactions")
    return df


# --------------------------------------------------------------------------- `::` files


def read_colon_file(path: Path, n_fields: int, layout: str,
                    encodings: tuple[str, ...] = ("utf-8",)) -> tuple[list[list[str]], list[int]]:
    """Split a MovieLens-style ``a::b::c`` file into fields.

    Every line must have exactly ``n_fields`` fields; in a 3-field line (``movies.dat``)
    the middle field, the title, may itself contain ``::``.

    Returns (rows, line numbers), skipping blank lines. A line with the wrong number
    of fields is a GenrecError naming the file, the line and the expected ``layout``.
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
            raise GenrecError(f"{path} line {no}: expected {n_fields} fields `{layout}`, got {len(parts)}: "
                              f"{_short(line)}", "fix or remove that line")
        rows.append(parts)
        numbers.append(no)
    return rows, numbers


def _numeric(values: list[str], numbers: list[int], path: Path, what: str, layout: str,
             integer: bool) -> np.ndarray:
    """Parse a column of a `::` file; a bad value names its line."""
    s = pd.to_numeric(pd.Series(values, dtype=object).str.strip(), errors="coerce")
    bad = s.isna().to_numpy()
    if integer and not bad.all():
        bad = bad | ((s.to_numpy(dtype=np.float64, na_value=0.0) % 1) != 0)
    if bad.any():
        i = int(np.argmax(bad))
        kind = "an integer" if integer else "a number"
        raise GenrecError(f"{path} line {numbers[i]}: {what} {values[i]!r} is not {kind} (`{layout}`)",
                          "fix or remove that line")
    return s.to_numpy(dtype=np.int64 if integer else np.float64)


RATINGS_LAYOUT = "user::item::rating::timestamp"
MOVIES_LAYOUT = "item::title::genre|genre"


def load_colon_ratings(ratings: Path, movies: Path, fmt: str,
                       encodings: tuple[str, ...] = ("utf-8",)) -> RawData:
    """MovieLens-style ``ratings.dat`` + ``movies.dat`` (MovieTweetings uses the same layout).

    Every rating is an interaction, whatever its value. Ids are kept as the strings in
    the file (MovieTweetings' IMDb ids have leading zeros that matter). Genres
    ``A|B`` become ``"A, B"``.
    """
    rows, numbers = read_colon_file(ratings, 4, RATINGS_LAYOUT, encodings)
    if not rows:
        raise GenrecError(f"no interactions in {ratings}", "point data.path at a ratings file with lines "
                          f"`{RATINGS_LAYOUT}`")
    users, items, rating_s, ts_s = (list(c) for c in zip(*rows))
    inter = _interactions([u.strip() for u in users], [i.strip() for i in items],
                          _numeric(ts_s, numbers, ratings, "timestamp", RATINGS_LAYOUT, integer=True),
                          _numeric(rating_s, numbers, ratings, "rating", RATINGS_LAYOUT, integer=False))
    mrows, _ = read_colon_file(movies, 3, MOVIES_LAYOUT, encodings)
    ids = [r[0].strip() for r in mrows]
    genres = [", ".join(g.strip() for g in r[2].split("|") if g.strip()) for r in mrows]
    item_df = _item_table(ids, {"title": [r[1].strip() for r in mrows], "genres": genres})
    return RawData(inter, item_df, ["title", "genres"], "{title}. Genres: {genres}",
                   _sources(fmt, {"ratings": ratings, "movies": movies}))


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
        movies = _require_file(folder / "movies.dat", "movies file",
                               "put movies.dat beside ratings.dat or set data.items_path")
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
            raise GenrecError(f"the bundled data file {name} is missing from the installed package",
                              "reinstall genrec (`make install`) or run `python tools/build_bundled.py`")
        data = ref.read_bytes()
        hashes[name] = hashlib.sha256(data).hexdigest()
        tables[name] = pq.read_table(pa.BufferReader(data)).to_pandas()
    inter = tables["interactions.parquet"]
    inter = _interactions(inter["user_id"].astype(str).tolist(), inter["item_id"].astype(str).tolist(),
                          inter["timestamp"], inter["rating"])
    it = tables["items.parquet"]
    items = _item_table(it["item_id"].astype(str).tolist(),
                        {"title": it["title"].tolist(), "genres": it["genres"].tolist()})
    # package-relative names, so the manifest is the same wherever the package lives
    source = {"format": "bundled",
              "paths": {n.split(".")[0]: f"{BUNDLED_PACKAGE}/{n}" for n in BUNDLED_FILES},
              "sha256": {n.split(".")[0]: hashes[n] for n in BUNDLED_FILES},
              "derived_from": BUNDLED_ORIGIN}
    return RawData(inter, items, ["title", "genres"], "{title}. Genres: {genres}", source)


# --------------------------------------------------------------------------- P5


def load_p5(path: Path) -> RawData:
    """Amazon data as preprocessed by P5.

    ``sequential_data.txt`` (``user item item ...`` in time order), ``datamaps.json``
    (``id2user``, ``id2item``) and ``item_attributes.json`` (item number ->
    ``{asin, attributes}``). Users and items get their original ids (reviewer id,
    ASIN) because P5's numbers were assigned by first appearance and so leak order.
    """
    fix = "set data.path to a P5 folder with sequential_data.txt, datamaps.json, item_attributes.json"
    folder = _require_dir(path, "P5 folder", fix)
    seq_path = _require_file(folder / "sequential_data.txt", "P5 sequence file", fix)
    maps_path = _require_file(folder / "datamaps.json", "P5 id map", fix)
    attr_path = _require_file(folder / "item_attributes.json", "P5 item attribute file", fix)

    maps = _expect_mapping(_read_json(maps_path), maps_path, "P5 datamaps")
    for key in ("id2user", "id2item"):
        if not isinstance(maps.get(key), dict):
            raise GenrecError(f"{maps_path} has no '{key}' map", "use the datamaps.json made by P5")
    id2user: dict[str, str] = maps["id2user"]
    id2item: dict[str, str] = maps["id2item"]

    users: list[str] = []
    items: list[str] = []
    text = _decode(_read_bytes(seq_path), seq_path)
    for no, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise GenrecError(f"{seq_path} line {no}: expected `user item item ...`, got {_short(line)}",
                              "fix or remove that line")
        user = id2user.get(parts[0])
        if user is None:
            raise GenrecError(f"{seq_path} line {no}: user {parts[0]!r} is not in id2user of {maps_path}",
                              "use the sequential_data.txt and datamaps.json of the same P5 release")
        for tok in parts[1:]:
            asin = id2item.get(tok)
            if asin is None:
                raise GenrecError(f"{seq_path} line {no}: item {tok!r} is not in id2item of {maps_path}",
                                  "use the sequential_data.txt and datamaps.json of the same P5 release")
            items.append(asin)
        users.extend([user] * (len(parts) - 1))
    inter = _nonempty(_interactions(users, items, _positions(users)), seq_path)

    attrs = _expect_mapping(_read_json(attr_path), attr_path, "item number -> {asin, attributes}")
    ids: list[str] = []
    names: list[Any] = []
    for num, rec in attrs.items():
        if not isinstance(rec, dict):
            raise GenrecError(f"{attr_path}: item {num!r} must map to {{asin, attributes}}, "
                              f"got {type(rec).__name__}", "use the item_attributes.json made for P5")
        # the map's ASIN is the id used in interactions; the record's own is a fallback
        asin = id2item.get(str(num)) or rec.get("asin")
        if not asin:
            raise GenrecError(f"{attr_path}: item {num!r} has no ASIN (not in id2item, no 'asin' key)",
                              "use the item_attributes.json made for this datamaps.json")
        ids.append(str(asin))
        names.append(rec.get("attributes") or [])
    item_df = _item_table(ids, {"attributes": names})
    return RawData(inter, item_df, ["attributes"], "Attributes: {attributes}",
                   _sources("p5", {"sequences": seq_path, "datamaps": maps_path, "item_attributes": attr_path}))


# --------------------------------------------------------------------------- LC-Rec


def _lcrec_name(folder: Path, name: str | None) -> str:
    found = sorted(p.name[: -len(".inter.json")] for p in folder.glob("*.inter.json"))
    if name is not None:
        if name not in found:
            listing = ", ".join(found) if found else "none"
            raise GenrecError(f"no {name}.inter.json in {folder} (datasets there: {listing})",
                              "fix data.name or data.path")
        return name
    if not found:
        raise GenrecError(f"no *.inter.json file in {folder}",
                          "set data.path to an LC-Rec folder with <Name>.inter.json and <Name>.item.json")
    if len(found) > 1:
        raise GenrecError(f"{folder} holds several LC-Rec datasets ({', '.join(found)})",
                          "pick one with data.name")
    return found[0]


def load_lcrec(path: Path, name: str | None = None) -> RawData:
    """LC-Rec: ``<Name>.inter.json`` ({user: [item, ...]} in time order) + ``<Name>.item.json``.

    Ids are the index strings of the files. ``path`` may also be the ``.inter.json``
    file itself.
    """
    if path.is_file() and path.name.endswith(".inter.json"):
        folder, name = path.parent, path.name[: -len(".inter.json")]
    else:
        folder = _require_dir(path, "LC-Rec folder",
                              "set data.path to a folder with <Name>.inter.json and <Name>.item.json")
    name = _lcrec_name(folder, name)
    inter_path = folder / f"{name}.inter.json"
    item_path = _require_file(folder / f"{name}.item.json", "LC-Rec item file",
                              f"put {name}.item.json beside {name}.inter.json")

    seqs = _expect_mapping(_read_json(inter_path), inter_path, "user -> [item, ...]")
    users: list[str] = []
    items: list[str] = []
    for user, seq in seqs.items():
        if not isinstance(seq, list) or not all(isinstance(i, (int, str)) and not isinstance(i, bool)
                                                for i in seq):
            raise GenrecError(f"{inter_path}: user {user!r} must map to a list of item ids, got {_short(str(seq))}",
                              "use the .inter.json made by LC-Rec")
        users.extend([str(user)] * len(seq))
        items.extend(str(i) for i in seq)
    inter = _nonempty(_interactions(users, items, _positions(users)), inter_path)

    recs = _expect_mapping(_read_json(item_path), item_path, "item -> {title, description, ...}")
    fields = list(LCREC_FIELDS)
    for item, rec in recs.items():
        if not isinstance(rec, dict):
            raise GenrecError(f"{item_path}: item {item!r} must map to an object of text fields, "
                              f"got {type(rec).__name__}", "use the .item.json made by LC-Rec")
        # keep any extra text fields a variant of the format may carry
        fields.extend(k for k in rec if k not in fields)
    item_df = _item_table([str(k) for k in recs], {f: [r.get(f) for r in recs.values()] for f in fields})
    # LC-Rec's preprocessing ends every title with "."; don't add a second one
    titles = [t for t in item_df["title"] if t]
    stop = "" if titles and all(t.rstrip().endswith((".", "!", "?")) for t in titles) else "."
    template = f"{{title}}{stop} Brand: {{brand}}. Categories: {{categories}}. {{description}}"
    return RawData(inter, item_df, fields, template,
                   _sources("lcrec", {"interactions": inter_path, "items": item_path}, name=name))


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
            raise GenrecError(f"cannot read {path} as Parquet ({str(e).splitlines()[0]})",
                              "check that the file is a complete Parquet file") from None
    if sep is None:
        if suffix not in _TEXT_EXTENSIONS:
            raise GenrecError(f"cannot tell the format of {path} from its extension {suffix or '(none)'!r}",
                              "use .csv, .tsv or .parquet, or set data.sep for a delimited text file")
        sep = _TEXT_EXTENSIONS[suffix]
    try:
        # strings throughout: ids keep leading zeros, and text is never turned into NaN
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8",
                           engine="c" if len(sep) == 1 else "python")
    except UnicodeDecodeError:
        _decode(_read_bytes(path), path)  # raises with the line number
        raise
    except pd.errors.EmptyDataError:
        raise GenrecError(f"{path} is empty", "point data.path at a file with a header line and rows") from None
    except (pd.errors.ParserError, ValueError) as e:
        msg = " ".join(str(e).split())
        raise GenrecError(f"cannot parse {path} with separator {sep!r}: {msg}",
                          "fix that line, or set data.sep to the file's separator") from None
    except OSError as e:
        raise GenrecError(f"cannot read {path} ({e.strerror or e})", "check the file's permissions") from None


def _need_columns(df: pd.DataFrame, path: Path, cols: list[tuple[str, str]]) -> None:
    for key, col in cols:
        if col not in df.columns:
            have = ", ".join(map(str, df.columns)) or "none"
            raise GenrecError(f"column {col!r} (data.{key}) not in {path}; its columns are: {have}",
                              f"set data.{key} to one of those columns")


def _id_column(s: pd.Series, path: Path, col: str) -> list[str]:
    """An id column as str; an empty id is an error naming its row."""
    values = s.astype(object)
    empty = values.isna().to_numpy() | (values.astype(str).str.strip() == "").to_numpy()
    if empty.any():
        row = int(np.argmax(empty))
        raise GenrecError(f"{path}: column {col!r} is empty in data row {row + 1} "
                          f"({int(empty.sum())} empty in all)", "fill in or remove those rows")
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
            raise GenrecError(f"{path}: column {col!r} is empty in data row {row + 1}",
                              "fill in or remove those rows, or set data.time_col: null")
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
        raise GenrecError(f"{path}: column {col!r} has {text.iloc[row]!r} in data row {row + 1}, "
                          "which is neither a number nor a date",
                          "fix that value, or set data.time_col: null to use file order")
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
        raise GenrecError(f"no interactions in {path}", "point data.path at a file with interaction rows")
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
    if cfg.format not in FORMATS:
        raise GenrecError(f"unknown data.format {cfg.format!r}", f"use one of {', '.join(FORMATS)}")
    if cfg.format == "bundled":
        return load_bundled()
    path = _resolve(cfg.path, base)
    if path is None:
        raise GenrecError(f"data.path is not set (needed for data.format: {cfg.format})",
                          "set data.path to the file or folder with the data")
    if not path.exists():
        raise GenrecError(f"data.path not found: {path}", "fix data.path (relative paths start at the "
                          "config file's folder)")
    items_path = _resolve(cfg.items_path, base)
    loaders: dict[str, Callable[[], RawData]] = {
        "movietweetings": lambda: load_movietweetings(path, items_path),
        "movielens": lambda: load_movielens(path, items_path),
        "p5": lambda: load_p5(path),
        "lcrec": lambda: load_lcrec(path, cfg.name),
        "table": lambda: load_table(path, cfg, items_path),
    }
    return loaders[cfg.format]()
