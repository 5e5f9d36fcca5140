"""`edgemfm run` (a prompt, streamed; a cascade; speculative decoding; speech) and `edgemfm chat`
(a question per line of stdin). Neither imports torch, transformers nor onnx.

Example:
    $ edgemfm run bundles/default-jetson --prompt "What is in the picture?" --image cat.png
    $ edgemfm chat bundles/default-jetson < questions.txt
"""

from __future__ import annotations

import argparse
import sys

from edgemfm import arguments as A
from edgemfm import speech
from edgemfm.cli.console import err


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add `edgemfm run BUNDLE --prompt ...` and `edgemfm chat BUNDLE` to the subcommands."""
    from edgemfm.runtimes.selftests import TESTS  # numpy only: the cascade's self-test names for --self-test

    r = sub.add_parser("run", help="run a bundle on a prompt, streaming the answer")
    _runtime_arguments(r)
    r.add_argument(
        "--prompt", default="", type=_prompt, help="the question or instruction (default: none, e.g. to transcribe)"
    )
    r.add_argument(
        "--audio", action="append", default=[], help="audio file (repeat for several; -: raw PCM from stdin)"
    )
    r.add_argument(
        "--temperature", type=A.arg(A.number, float, low=0), default=0.0, help="0 (default): greedy; above 0: sampling"
    )
    r.add_argument("--top-k", type=A.COUNT, default=0, help="sample among the k most likely tokens (0: all)")
    r.add_argument("--top-p", type=A.PROBABILITY, default=1.0, help="sample within this probability mass (1: all)")
    r.add_argument("--seed", type=A.SEED, help="sampling seed: the same seed gives the same answer")
    r.add_argument("--stop", action="append", default=[], help="end the answer before this text (repeat for several)")
    r.add_argument(
        "--draft",
        metavar="BUNDLE|prompt|lookahead",
        help="speculative decoding: a small bundle proposes tokens, 'prompt': n-gram lookup in the prompt, or "
        "'lookahead': the bundle's own lookahead head (export --lookahead), with n-gram lookup where the answer repeats",
    )
    r.add_argument(
        "--draft-k",
        type=A.AT_LEAST_ONE,
        metavar="K",
        help="tokens the draft proposes per target call (default: the k that pays by measured costs)",
    )
    r.add_argument(
        "--cascade",
        metavar="SMALL_BUNDLE",
        help="a small bundle that answers first; the given bundle only when it fails its self-test",
    )
    r.add_argument(
        "--escalate-below",
        metavar="LOGPROB_OR_JSON",
        help="with --cascade: a self-test score, or a calibration JSON (it names its self-test)",
    )
    r.add_argument(
        "--self-test",
        choices=TESTS,
        help="with --cascade: the self-test (default: the calibration JSON's, else mean_logprob)",
    )
    r.add_argument(
        "--on-demand",
        action="store_true",
        help="with --cascade: keep only the small bundle loaded; open the given one for each escalated question",
    )
    r.add_argument(
        "--trusted-key",
        action="append",
        default=[],
        type=A.name,
        metavar="KEY.pub",
        help="refuse bundles not signed by this public key (repeat for several; see `edgemfm sign`)",
    )
    speech.add_arguments(r)
    r.set_defaults(func=cmd_run)
    c = sub.add_parser("chat", help="chat with a bundle: a question per line of stdin, the KV cache kept across turns")
    _runtime_arguments(c)
    c.add_argument(
        "--encoder-cache",
        type=A.arg(A.number, float, low=0),
        metavar="MB",
        help="MiB of encoder rows kept for media seen again",
    )
    c.set_defaults(func=cmd_chat)


def cmd_run(args: argparse.Namespace) -> None:
    from edgemfm.runtimes import cascade, pipeline

    options = dict(
        device=args.device,
        threads=args.threads,
        memory_budget=args.memory_budget,
        draft=args.draft,
        draft_k=args.draft_k,
        trusted_keys=args.trusted_key or None,
    )
    if args.cascade:
        pipe = cascade.load(
            args.bundle,
            args.cascade,
            args.escalate_below,
            on_demand=args.on_demand,
            self_test=args.self_test,
            **options,
        )
    else:
        pipe = pipeline.load(args.bundle, **options)
    err.print(f"edgemfm: running on {pipe.provider}", highlight=False)
    if speech.wants_longform(pipe, args):
        speech.run(pipe, args)
        return
    pieces = pipe.generate(
        args.prompt,
        images=args.image,
        audio=args.audio,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        stop=args.stop,
    )
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.cascade:
        err.print(
            f"edgemfm: answered by the {pipe.answered_by} bundle "
            f"(self-test {pipe.test} {pipe.score:.3f}, escalate below {pipe.threshold:.3f})"
        )
    if args.draft:
        s = pipe.speculation
        err.print(
            f"edgemfm: draft accepted {s['accepted']} of {s['proposed']} proposed tokens in {s['target_calls']} target calls"
            f" (draft {s.get('draft_ms')} ms per token; target ms per call by tokens checked: {s.get('target_ms')})"
        )


def cmd_chat(args: argparse.Namespace) -> None:
    from edgemfm.runtimes import pipeline

    pipe = pipeline.load(
        args.bundle, args.device, args.threads, args.memory_budget, encoder_cache_mb=args.encoder_cache
    )
    err.print(f"edgemfm: chatting on {pipe.provider} (/image PATH, /reset; end of input ends)", soft_wrap=True)
    session, images = pipe.chat(), list(args.image)
    for line in sys.stdin:
        line = line.strip()
        if line == "/reset":
            session.reset()
            err.print("edgemfm: conversation reset")
        elif line.startswith("/image "):
            images.append(line.removeprefix("/image ").strip())
        elif line:
            for piece in session.ask(line, images=images, max_new_tokens=args.max_new_tokens):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            images = []


def _prompt(raw: str) -> str:
    return A.utf8("prompt", raw)


def _runtime_arguments(p: argparse.ArgumentParser) -> None:
    """The bundle and how to run it: shared by run and chat."""
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--image", action="append", default=[], help="image file (repeat for several)")
    p.add_argument("--max-new-tokens", type=A.COUNT, default=None, help="per answer (default: the bundle's setting)")
    p.add_argument("--device", type=A.name, help="profile whose execution providers to use (default: the bundle's)")
    p.add_argument("--threads", type=A.THREADS, default=0, help="threads per session (0: one per core)")
    p.add_argument(
        "--memory-budget", type=A.POSITIVE, metavar="MB", help="MiB the run may use (default: the profile's)"
    )
