"""The data layer: raw loaders per format, filtering, ordering and leave-last-out splits.

Typical use::

    from genrec.data import prepare_stage, PreparedDataset
    ds = prepare_stage(cfg)                      # writes RUN/data
    ds = PreparedDataset.load(run_dir / "data")  # later stages
"""

from genrec.data.dataset import (
    MIN_SEQUENCE_LENGTH,
    SPLITS,
    PreparedDataset,
    kcore_mask,
    prepare,
    prepare_stage,
    split_rows,
    truncate,
)
from genrec.data.loaders import (
    FORMATS,
    RawData,
    load_bundled,
    load_colon_ratings,
    load_lcrec,
    load_movielens,
    load_movietweetings,
    load_p5,
    load_raw,
    load_recbole,
    load_table,
    read_table,
)

__all__ = [
    "FORMATS",
    "MIN_SEQUENCE_LENGTH",
    "SPLITS",
    "PreparedDataset",
    "RawData",
    "kcore_mask",
    "load_bundled",
    "load_colon_ratings",
    "load_lcrec",
    "load_movielens",
    "load_movietweetings",
    "load_p5",
    "load_raw",
    "load_recbole",
    "load_table",
    "prepare",
    "prepare_stage",
    "read_table",
    "split_rows",
    "truncate",
]
