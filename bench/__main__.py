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
from pathlib import Path
from typing import Any

from bench import chat, downloads, models, openai_api, pages, report
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
        default="generated",
        help="chat model: 'generated' (random weights, SmolLM2-135M shape; default), a shape name "
        f"({', '.join(models.SHAPES)}), 'real' ({REAL_MODEL}), or a model directory",
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each download and short-prompt chat")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: short prompts and answers (figures not comparable)"
    )
    parser.add_argument("--keep", action="store_true", help="keep var/bench/run/ (HF cache, hub, logs)")
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
        if args.model == "generated":
            args.model = models.TINY.name
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    if unknown := set(args.only) - set(SECTIONS):
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    return args


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
    chat_dir = (
        chat_model_dir(args.model, models_root) if {"chat", "multiturn", "openai"} & set(args.only) else None
    )
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

    hub = downloads.start_hub(run_dir / "hub")
    product = Product(run_dir / "product", hub.url)
    server: MlxServer | None = None
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
        snapshot_id = None
        if not down and chat_dir is not None:
            down = attempt("registering the chat model", lambda: product.register_model(CHAT_REPO, chat_dir))
            if not down:
                from models_app.models import Snapshot

                snapshot_id = Snapshot.objects.get(repository__repo_id=CHAT_REPO, status="ready").id
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

        raw = None
        if chat_dir is not None:
            say(f"loading {chat_dir} in this process (the raw mlx-lm side)…")
            raw = chat.Raw(chat_dir)
        if "chat" in args.only and raw is not None:
            with timed(Section("Chat streaming")) as section:
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
                    new_tokens=16 if args.quick else chat.NEW_TOKENS,
                    rounds=args.rounds,
                )

        if {"multiturn", "openai"} & set(args.only) and chat_dir is not None:
            say("starting mlx_lm.server…")
            try:
                server = MlxServer(chat_dir, run_dir / "logs").start()
            except Exception:
                say(f"mlx_lm.server failed to start:\n{traceback.format_exc()}")
                server = None
        if "multiturn" in args.only and raw is not None:
            with timed(Section("Multi-turn chat")) as section:
                sections.append(section)
                turn_options = {
                    "turn_tokens": 4 if args.quick else chat.TURN_TOKENS,
                    "rounds": 1 if args.quick else chat.TURN_ROUNDS,
                }
                chat.run_multi_turn(
                    section,
                    tokenizer=raw.tokenizer,
                    product=live,
                    snapshot_id=snapshot_id,
                    unavailable=down,
                    server=server,
                    server_model=str(chat_dir),
                    label=chat_dir.name,
                    **turn_options,
                )
                # A real model's answers end where it chooses and re-encode as real text does: measured
                # beside the random one whenever it is here.
                real = Path(args.real_model).expanduser().resolve() if args.real_model else REAL_MODEL
                if not args.smoke and chat_dir.resolve() != real.resolve():
                    # ~10 tokens/s on a shared 2-core CPU: shorter answers, one conversation.
                    real_options = {"turn_tokens": min(turn_options["turn_tokens"], 24), "rounds": 1}
                    multi_turn_real(section, real, live, down, run_dir, real_options)
        if "openai" in args.only and raw is not None:
            with timed(Section("OpenAI-compatible API")) as section:
                sections.append(section)
                openai_api.run(
                    section,
                    tokenizer=raw.tokenizer,
                    raw=raw,
                    product=live,
                    product_model=CHAT_REPO,
                    unavailable=down,
                    server=server,
                    server_model=str(chat_dir),
                    max_tokens=16 if args.quick else openai_api.MAX_TOKENS,
                )
    finally:
        say("stopping the product, mlx_lm.server and the hub…")
        if server is not None:
            server.stop()
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

    total = time.monotonic() - _started
    table = report.markdown(sections, info, total_seconds=total)
    path = report.save(OUT_DIR, sections, info, table, total)
    if not args.keep:
        # The logs stay for a look at what went wrong; the gigabytes go.
        for name in ("hub", "product/hf-cache", "downloads", "pages"):
            shutil.rmtree(run_dir / name, ignore_errors=True)
    print()
    print(table)
    print(f"\nSaved {path.relative_to(ROOT)} and var/bench/latest.json; logs in {run_dir.relative_to(ROOT)}/")
    return smoke_verdict(sections) if args.smoke else 0


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
    _, tokenizer = load(str(model_dir))
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
