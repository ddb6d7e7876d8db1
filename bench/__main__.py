"""`make bench`: the product against the raw libraries and the peer server, side by side, in one run.

    python -m bench                       # everything (~10-15 min on 2 CPU cores)
    python -m bench --only chat,openai    # some sections: downloads, chat, multiturn, openai, pages
    python -m bench --model real          # chat on ../shared/models/SmolLM2-135M-Instruct-mlx (beside the repo)
    python -m bench --smoke               # CI: every section on tiny inputs; exit 1 if any product row broke

Prints a markdown table of figures and ratios, and writes var/bench/bench-<UTC time>.json and latest.json.
Nothing here asserts a time: a missed target is a "no" in the table, never a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import chat, downloads, hops, models, openai_api, pages, report
from bench.report import Section
from bench.stack import ROOT, MlxServer, Product

OUT_DIR = ROOT / "var" / "bench"
SECTIONS = ("downloads", "chat", "multiturn", "openai", "pages")
# The real model lies beside the repository in a development checkout (../shared/models); a user's clone has
# none, and `--model DIR` takes any local MLX model instead.
REAL_MODEL = ROOT.parent / "shared" / "models" / "SmolLM2-135M-Instruct-mlx"
CHAT_REPO = "bench/chat-model"
REAL_REPO = "bench/real-model"
_started = time.monotonic()


def say(message: str) -> None:
    elapsed = time.monotonic() - _started
    print(f"[bench {int(elapsed // 60):02d}:{int(elapsed % 60):02d}] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def timed(section: Section) -> Iterator[Section]:
    say(f"{section.name}…")
    started = time.monotonic()
    try:
        yield section
    except Exception as exc:  # one broken side must not cost the other sections their figures
        section.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        say(f"{section.name} failed:\n{traceback.format_exc()}")
    section.seconds = time.monotonic() - started
    say(f"{section.name} done in {section.seconds:.0f} s")


def attempt(what: str, step: Callable[[], object]) -> str:
    """Run a product set-up step; '' when it worked, else why (the product rows then say n/a)."""
    try:
        step()
        return ""
    except Exception as exc:
        say(f"{what} failed:\n{traceback.format_exc()}")
        return f"{what}: {type(exc).__name__}: {exc}".splitlines()[0][:200]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated, from {', '.join(SECTIONS)}"
    )
    parser.add_argument(
        "--model",
        default="",
        help="only this chat model: 'tiny' (the fast model), 'generated' (random weights, SmolLM2-135M "
        f"shape), a shape name ({', '.join(models.SHAPES)}), 'real' ({REAL_MODEL}), or a model directory. "
        "Default: the fast tiny model first, then the SmolLM2-135M-shaped one (shorter answers on it)",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each download and short-prompt chat")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: short prompts and answers (figures not comparable)"
    )
    parser.add_argument("--keep", action="store_true", help="keep var/bench/run/ (HF cache, hub, logs)")
    parser.add_argument(
        "--xet-only",
        action="store_true",
        help="downloads: only the case served through the local Hub's Xet CAS (its rows, in a few minutes)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="CI's check that the benchmark still runs: --quick, the tiny model, small downloads, one round; "
        "exits 1 when any product row could not be measured (figures not comparable)",
    )
    parser.add_argument(
        "--real-model",
        default="",
        help=f"the real model the multi-turn section also measures (default {REAL_MODEL}; skipped when absent)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.quick = True
        args.rounds = 1
        args.model = args.model or models.TINY.name
    # The default run measures both: the fast model shows the product's own per-token costs, the
    # SmolLM2-shaped one a real model's speed here.
    args.models = [args.model] if args.model else [models.TINY.name, "generated"]
    args.both = not args.model
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := set(args.only) - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


@dataclass
class ChatModel:
    choice: str  # as --model names it
    path: Path
    repo_id: str  # in the product
    name: str  # as the rows name it
    fast: bool  # the tiny model: hundreds of tokens/s, per-token costs show


def chat_model(choice: str, models_root: Path) -> ChatModel:
    path = chat_model_dir(choice, models_root)
    if choice == models.TINY.name:
        return ChatModel(choice, path, "bench/fast-model", "fast tiny model", fast=True)
    if choice == "generated":
        return ChatModel(choice, path, CHAT_REPO, "SmolLM2-135M-shaped model", fast=False)
    if choice in models.SHAPES:
        return ChatModel(choice, path, f"bench/{choice}-model", f"{choice}-shaped model", fast=False)
    return ChatModel(choice, path, f"bench/{path.name}", path.name, fast=False)


def chat_model_dir(choice: str, models_root: Path) -> Path:
    if choice == "generated":
        return models.chat_model(models_root)
    if choice in models.SHAPES:
        return models.chat_model(models_root, models.SHAPES[choice])
    if choice == "real":
        if not REAL_MODEL.is_dir():
            raise SystemExit(
                f"--model real: {REAL_MODEL} is not here; use the generated model or --model DIR (a local MLX model)"
            )
        return REAL_MODEL
    path = Path(choice).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise SystemExit(f"--model: {path} has no config.json")
    return path


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    info = report.machine()
    say(f"machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB, mlx {info['mlx']}")
    run_dir = OUT_DIR / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    models_root = OUT_DIR / "models"
    sections: list[Section] = []

    say("building the benchmark models (cached in var/bench/models/)…")
    chat_models = (
        [chat_model(choice, models_root) for choice in args.models]
        if {"chat", "multiturn", "openai"} & set(args.only)
        else []
    )
    chat_sections: list[Section] = []  # the table starts with them: the fast model's first
    hop_tables: list[dict[str, Any]] = []
    cases_dirs = []
    if "downloads" in args.only and args.smoke:
        cases_dirs = [
            (
                "one small safetensors file (tiny shape, bf16)",
                "bench/tiny-bf16",
                models.big_model(models_root, models.TINY),
            ),
            ("20 files of 50 kB", "bench/some-small-files", models.sharded_model(models_root, files=20)),
            (
                "one small safetensors file through Xet",
                "bench/tiny-bf16-xet",
                models.big_model(models_root, models.TINY),
            ),
        ]
    elif "downloads" in args.only:
        cases_dirs = [
            (
                "one 988 MB safetensors file (Qwen2.5-0.5B bf16 shape)",
                "bench/Qwen2.5-0.5B-bf16",
                models.big_model(models_root),
            ),
            ("200 files of 50 kB", "bench/many-small-files", models.sharded_model(models_root)),
            # The real Hub serves weights through Xet: the same file from the local Hub's Xet CAS.
            (
                "one 988 MB safetensors file through Xet",
                "bench/Qwen2.5-0.5B-bf16-xet",
                models.big_model(models_root),
            ),
        ]

    if args.xet_only:
        cases_dirs = [case for case in cases_dirs if case[1].endswith("-xet")]
    hub = downloads.start_hub(run_dir / "hub")
    product = Product(run_dir / "product", hub.url)
    try:
        say(f"local hub at {hub.url}; publishing…")
        cases = [
            downloads.publish(hub, label, repo_id, path, xet=repo_id.endswith("-xet"))
            for label, repo_id, path in cases_dirs
        ]

        needs_product = bool({"downloads", "chat", "multiturn", "openai"} & set(args.only))
        if needs_product:
            say("starting the product (private Redis, SQLite, HF cache; web + workers)…")
        down = attempt("product set-up", product.prepare) if needs_product else "not needed"
        if not down:
            needs_inference = bool({"chat", "multiturn", "openai"} & set(args.only))
            down = attempt(
                "product start",
                lambda: product.start(inference=needs_inference, downloads="downloads" in args.only),
            )
        live = product if not down else None

        if "downloads" in args.only:
            with timed(Section("Downloads")) as section:
                sections.append(section)
                downloads.run(
                    section,
                    product=live,
                    unavailable=down,
                    hub_url=hub.url,
                    cases=cases,
                    work=run_dir / "downloads",
                    rounds=args.rounds,
                )

        for model in chat_models:
            chat_sections.extend(measure_model(model, args, product=live, down=down, run_dir=run_dir))
            hop_tables.append(model_hops(model, product))
    finally:
        say("stopping the product and the hub…")
        chat.close_kept_clients()
        product.stop()
        hub.stop()

    if "pages" in args.only:
        with timed(Section("Pages and API")) as section:
            sections.append(section)
            from devkit.redis_server import RedisServer

            redis = RedisServer(run_dir / "pages-redis").start()
            try:
                pages.run(section, work=run_dir / "pages", redis_url=redis.url)
            finally:
                redis.stop()

    sections = chat_sections + sections
    total = time.monotonic() - _started
    table = report.markdown(sections, info, total_seconds=total)
    hop_text = "\n\n".join(hops.markdown(t, t["model"]) for t in hop_tables)
    path = report.save(OUT_DIR, sections, info, table, total, extra={"hops": hop_tables})
    if not args.keep:
        # The logs stay for a look at what went wrong; the gigabytes go.
        for name in ("hub", "product/hf-cache", "downloads", "pages"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
    print()
    print(table)
    if hop_text:
        print()
        print(hop_text)
    print(f"\nSaved {path.relative_to(ROOT)} and var/bench/latest.json; logs in {run_dir.relative_to(ROOT)}/")
    return smoke_verdict(sections) if args.smoke else 0


def measure_model(
    model: ChatModel, args: argparse.Namespace, *, product: Product | None, down: str, run_dir: Path
) -> list[Section]:
    """Chat (websocket), the fast model's ratios beside a CPU-bound process, multi-turn and the OpenAI API
    (SSE) on one model, each side against its baseline; mlx_lm.server runs only meanwhile."""
    sections: list[Section] = []
    snapshot_id = None
    if product is not None:
        down = attempt(f"registering {model.name}", lambda: product.register_model(model.repo_id, model.path))
        if not down:
            from models_app.models import Snapshot

            snapshot_id = Snapshot.objects.get(repository__repo_id=model.repo_id, status="ready").id
    live = product if not down else None
    say(f"loading {model.path} in this process (the raw mlx-lm side)…")
    raw = chat.Raw(model.path)
    speed = raw.speed()
    title = f"{model.name}, ~{speed:,.0f} tok/s raw"
    say(title)
    hops.clear()
    # In the default run the slow model gets shorter answers and fewer conversations, so the whole run stays
    # under half an hour on 2 cores (22 min measured); `--model X` alone measures X in full.
    short = args.both and not model.fast
    ttft_slack = chat.FAST_TTFT_SLACK_MS if model.fast else chat.TTFT_SLACK_MS
    if "chat" in args.only:
        with timed(Section(f"Chat streaming ({model.name})")) as section:
            sections.append(section)
            chat.run_streaming(
                section,
                raw=raw,
                product=live,
                snapshot_id=snapshot_id,
                unavailable=down,
                prompts={"~30-token prompt": 30, "~100-token prompt": 100}
                if args.quick
                else {"~100-token prompt": 100, "~1,000-token prompt": 1000},
                new_tokens=16 if args.quick else chat.NEW_TOKENS // 2 if short else chat.NEW_TOKENS,
                rounds=args.rounds,
                title=title,
                ttft_slack=ttft_slack,
            )
        if model.fast:
            with timed(Section(f"Chat beside a CPU-bound process ({model.name})")) as section:
                sections.append(section)
                chat.run_beside_busy(
                    section,
                    raw=raw,
                    product=live,
                    snapshot_id=snapshot_id,
                    product_model=model.repo_id,
                    unavailable=down,
                    title=title,
                    new_tokens=16 if args.quick else openai_api.MAX_TOKENS,
                    rounds=args.rounds if args.quick else max(args.rounds, chat.VS_RAW_ROUNDS),
                    ttft_slack=ttft_slack,
                )

    server: MlxServer | None = None
    if {"multiturn", "openai"} & set(args.only):
        say("starting mlx_lm.server…")
        try:
            server = MlxServer(model.path, run_dir / f"logs-{model.choice}").start()
        except Exception:
            say(f"mlx_lm.server failed to start:\n{traceback.format_exc()}")
    try:
        if "multiturn" in args.only:
            with timed(Section(f"Multi-turn chat ({model.name})")) as section:
                sections.append(section)
                turn_options = {
                    "turn_tokens": 4 if args.quick else chat.TURN_TOKENS,
                    "rounds": 1 if args.quick else 2 if short else chat.TURN_ROUNDS,
                }
                chat.run_multi_turn(
                    section,
                    tokenizer=raw.tokenizer,
                    model=raw.model,
                    product=live,
                    snapshot_id=snapshot_id,
                    unavailable=down,
                    server=server,
                    server_model=str(model.path),
                    label=title,
                    **turn_options,
                )
                # A real model's answers end where it chooses and re-encode as real text does: measured
                # beside the random one whenever it is here (once a run: with the slow model).
                real = Path(args.real_model).expanduser().resolve() if args.real_model else REAL_MODEL
                if not args.smoke and not model.fast and model.path.resolve() != real.resolve():
                    # ~10 tokens/s on a shared 2-core CPU: shorter answers, one conversation.
                    real_options = {"turn_tokens": min(turn_options["turn_tokens"], 24), "rounds": 1}
                    multi_turn_real(section, real, live, down, run_dir, real_options)
        if "openai" in args.only:
            with timed(Section(f"OpenAI-compatible API ({model.name})")) as section:
                sections.append(section)
                openai_api.run(
                    section,
                    tokenizer=raw.tokenizer,
                    raw=raw,
                    product=live,
                    product_model=model.repo_id,
                    unavailable=down,
                    server=server,
                    server_model=str(model.path),
                    max_tokens=16 if args.quick else openai_api.MAX_TOKENS,
                    title=title,
                    # Seconds a round on the fast model; on the slow one a round takes minutes.
                    rounds=3 if model.fast and not args.quick else 1,
                )
    finally:
        if server is not None:
            server.stop()
    return sections


def model_hops(model: ChatModel, product: Product) -> dict[str, Any]:
    """The hop table of the model's product requests measured since its sections began."""
    return {"model": model.name, **hops.table(product.log_dir / "inference.log")}


def multi_turn_real(
    section: Section,
    model_dir: Path,
    product: Product | None,
    down: str,
    run_dir: Path,
    options: dict[str, Any],
) -> None:
    label = model_dir.name
    if not (model_dir / "config.json").is_file():
        for side in ("product (websocket)", "mlx_lm.server"):
            section.unavailable(
                f"Multi-turn TTFT, {side} ({label})",
                f"skipped: no real model at {model_dir} (give one with --real-model DIR)",
            )
        return
    from mlx_lm import load

    say(f"multi-turn with the real model {model_dir}…")
    snapshot_id = None
    if product is not None:
        down = attempt("registering the real model", lambda: product.register_model(REAL_REPO, model_dir))
        if not down:
            from models_app.models import Snapshot

            snapshot_id = Snapshot.objects.get(repository__repo_id=REAL_REPO, status="ready").id
    real_model, tokenizer = load(str(model_dir))
    try:
        server: MlxServer | None = MlxServer(model_dir, run_dir / "logs-real").start()
    except Exception:
        say(f"mlx_lm.server failed to start:\n{traceback.format_exc()}")
        server = None
    try:
        chat.run_multi_turn(
            section,
            tokenizer=tokenizer,
            product=product if not down else None,
            snapshot_id=snapshot_id,
            unavailable=down,
            server=server,
            server_model=str(model_dir),
            label=label,
            model=real_model,
            **options,
        )
    finally:
        if server is not None:
            server.stop()


def smoke_verdict(sections: list[Section]) -> int:
    """1 when a section broke or a row could not be measured: the benchmark itself is broken."""
    broken = [f"{s.name}: {s.error}" for s in sections if s.error]
    broken += [f"{row.benchmark}: {row.unavailable}" for s in sections for row in s.rows if row.unavailable]
    for line in broken:
        say(f"smoke: not measured: {line}")
    say(
        f"smoke: {'FAILED' if broken else 'ok'} ({len(broken)} broken of {sum(len(s.rows) for s in sections)} rows)"
    )
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
