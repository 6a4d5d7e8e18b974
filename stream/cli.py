"""``fairstream``: one entry point, one library call per subcommand."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stream import cli_errors, cli_experiment, cli_help, preflight
from stream.settings import Settings, load_settings

DESCRIPTION = """\
fairstream: a streaming online-learning recommender. Workers learn contextual
bandits from Kafka events; servers recommend with the policies they publish.
Each command is one library call. Settings come from --config (TOML) and
FAIRSTREAM_<SECTION>__<KEY> environment variables. A failure prints one line
'fairstream: error: ...'; exit code 2 for usage or settings, 1 at run time."""


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(args.config)
    if getattr(args, "bootstrap", None):
        settings = settings.replace(kafka={"bootstrap": args.bootstrap})
    return settings


def _kafka_settings(args: argparse.Namespace) -> Settings:
    """Settings for a command that needs Kafka, once a bootstrap server answers."""
    settings = _settings(args)
    preflight.check_kafka(settings.kafka.bootstrap)
    return settings


def cmd_broker(args: argparse.Namespace) -> int:
    from stream.kafka.broker import run_broker

    preflight.check_port_free("127.0.0.1", args.port, "--port")
    return run_broker(args.port)


def cmd_topics_create(args: argparse.Namespace) -> int:
    from stream.kafka.topics import ensure_topics

    created = ensure_topics(_kafka_settings(args))
    print(f"created: {', '.join(created) or 'none (all exist)'}")
    return 0


def _dataset(name: str) -> str:
    if name not in ("ml100k", "obd"):
        raise argparse.ArgumentTypeError(f"unknown data set {name!r} (choose from ml100k, obd)")
    return name


def cmd_data_fetch(args: argparse.Namespace) -> int:
    from stream import data

    settings = _settings(args)
    datasets = tuple(args.datasets or ("ml100k", "obd"))
    data.fetch(settings.data.cache_dir, datasets)
    for name in datasets:
        print(f"{name}: {data.dataset_dir(settings.data.cache_dir, name)}")
    return 0


def cmd_produce_catalog(args: argparse.Namespace) -> int:
    from stream import data
    from stream.kafka.producers import catalog_items, publish_catalog

    settings = _kafka_settings(args)
    ml = data.load_movielens(settings.data.cache_dir)
    n = publish_catalog(settings, catalog_items(ml))
    print(f"published {n} items to {settings.topics.items}")
    return 0


def cmd_produce_replay(args: argparse.Namespace) -> int:
    from stream import data
    from stream.kafka.producers import publish_events, replay_count, replay_events
    from stream.privacy import Pseudonymizer

    settings = _kafka_settings(args)
    ml = data.load_movielens(settings.data.cache_dir)
    edge = Pseudonymizer.from_settings(settings.privacy)
    n = publish_events(settings, replay_events(ml, args.limit, edge), rate=args.rate,
                       total=replay_count(ml, args.limit))
    print(f"published {n} events to {settings.topics.events}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from stream.core.keys import refuse_dev_key
    from stream.worker import run_worker

    settings = _settings(args)
    refuse_dev_key(settings, "fairstream worker")  # settings errors before the network check
    preflight.check_kafka(settings.kafka.bootstrap)
    w = settings.worker
    preflight.check_port_free(w.metrics_host, w.metrics_port, "worker.metrics_port")
    return run_worker(settings, exit_when_idle=args.exit_when_idle)


def cmd_dlq_tail(args: argparse.Namespace) -> int:
    from stream.kafka.inspect import dlq_tail

    settings = _kafka_settings(args)
    lines = dlq_tail(settings, n=args.n, reason=args.reason, scan=args.scan)
    which = f" of reason {args.reason}" if args.reason else ""
    print("\n".join(lines) if lines else f"no dead letters{which} on {settings.topics.dlq}")
    return 0


def cmd_policy_show(args: argparse.Namespace) -> int:
    from stream.kafka.inspect import policy_show

    print("\n".join(policy_show(_kafka_settings(args), version=args.version)))
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    from stream.core.keys import refuse_dev_key
    from stream.kafka.erasure import publish_erasure
    from stream.kafka.topics import ensure_topics

    settings = _settings(args)
    refuse_dev_key(settings, "fairstream forget", edge=True, signing=False)
    ensure_topics(settings)  # a deployment older than the erasure topic gets it here
    markers = publish_erasure(settings, args.user_id)
    print(f"erasure published on {settings.topics.erasure} for {len(markers)} pseudonym(s); "
          "workers and servers forget the user as they read it")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from stream.sim.demo import run_demo

    run_demo(_settings(args), events=args.events, out_dir=args.out, seed=args.seed)
    return 0


def cmd_chaos(args: argparse.Namespace) -> int:
    from stream.bench.chaos import ChaosPlan, run_chaos_embedded

    plan = ChaosPlan(random=args.random_kills, ratings=args.ratings, hostile=args.hostile,
                     seed=args.seed)
    summary = run_chaos_embedded(_settings(args), out_dir=args.out, plan=plan)
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


def _emit(results: dict, json_path: Path | None) -> None:
    """Print figures as an aligned table; also write them as JSON when asked."""
    width = max(map(len, results), default=0)
    for key, value in results.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
        print(f"  {key:<{width}}  {shown}")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"written: {json_path}")


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None


def cmd_bench_learners(args: argparse.Namespace) -> int:
    from bandits import LinUCB
    from stream.bench.learners import run_learners_bench

    settings = _settings(args)
    # The consumer loop under test updates the real LinUCB (Sherman–Morrison), as a worker does.
    policy = LinUCB(dim=settings.features.dim, alpha=settings.bandit.alpha, lam=settings.bandit.lam)
    results = run_learners_bench(
        n_items=args.items, device=args.device or settings.model.device, progress=True,
        dim=settings.features.dim, cache_dir=Path(args.cache) if args.cache else None,
        consumer_seconds=args.seconds,
        update=lambda x, r: policy.update(x[None, :], np.array([r])))
    print("fairstream bench learners")
    _emit(results, args.json)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from stream.core.keys import refuse_dev_key
    from stream.serve import run_server

    settings = _settings(args)
    refuse_dev_key(settings, "fairstream serve", edge=True)  # before the network check
    preflight.check_kafka(settings.kafka.bootstrap)
    host = settings.serve.host if args.host is None else args.host
    port = settings.serve.port if args.port is None else args.port
    preflight.check_port_free(host, port, "serve.port")
    return run_server(settings, host=host, port=port)


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from stream.bench.serve import run_serve_bench

    results = run_serve_bench(_settings(args), bootstrap=args.bootstrap, requests=args.requests,
                              duration_s=args.duration, rate=args.rate,
                              n_candidates=args.candidates,
                              experiment=not args.no_experiment, progress=True)
    print("fairstream bench serve")
    _emit(results, args.json)
    return 0


def cmd_bench_serve_reads(args: argparse.Namespace) -> int:
    from stream.bench.serve_reads import run_serve_reads_bench

    results = run_serve_reads_bench(_settings(args), bootstrap=args.bootstrap,
                                    users=args.users, impressions=args.impressions,
                                    clicks=args.clicks, factors=tuple(args.factors))
    print("fairstream bench serve-reads")
    _emit({k: v for k, v in results.items() if not isinstance(v, dict)}, None)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"written: {args.json}")
    return 0


def cmd_bench_pipeline(args: argparse.Namespace) -> int:
    from stream.bench.pipeline import run_pipeline_bench

    settings = _settings(args)
    size = {} if args.events is None else {"events": args.events}
    results = run_pipeline_bench(settings, **size, out_dir=args.out, json_path=args.json,
                                 progress=True, bootstrap=args.bootstrap)
    print("fairstream bench pipeline")
    _emit({k: v for k, v in results.items() if not isinstance(v, dict | list)}, None)
    return 0


def cmd_bench_scale(args: argparse.Namespace) -> int:
    from stream.bench.scale import run_scale_bench

    results = run_scale_bench(_settings(args), ratings=args.ratings, users=tuple(args.users),
                              workers=tuple(args.workers), out_dir=args.out,
                              json_path=args.json, bootstrap=args.bootstrap,
                              overhead_ratings=args.overhead_ratings,
                              overhead_repeats=args.overhead_repeats)
    print("fairstream bench scale")
    _emit({k: v for k, v in results.items() if not isinstance(v, dict)}, None)
    return 0


def cmd_bench_profiles(args: argparse.Namespace) -> int:
    from stream.bench.profiles import run_profiles_bench, table

    results = run_profiles_bench(users=tuple(args.users), repeats=args.repeats,
                                 stores=tuple(args.stores.split(",")),
                                 memory_share=args.memory_share, updates=args.updates,
                                 gets=args.gets, json_path=args.json, workdir=args.dir)
    print("fairstream bench profiles")
    print(table(results))
    if args.json is not None:
        print(f"written: {args.json}")
    return 0


def cmd_bench_bandits(args: argparse.Namespace) -> int:
    from learners.features import context_columns
    from stream.bench.bandits import run_bandits_bench

    settings = _settings(args)
    dim = settings.features.dim
    z = context_columns(dim) if args.z == "attributes" else "bias"
    results = run_bandits_bench(dims=args.dims, hybrid_items=args.items, hybrid_z=z,
                                hybrid_dim=dim, seed=args.seed)
    results["hybrid"]["item_context"] = args.z
    print("fairstream bench bandits")
    _emit(results, args.json)
    return 0


def cmd_bench_soak(args: argparse.Namespace) -> int:
    from stream.bench.soak import run_soak

    report = run_soak(_settings(args), args.minutes, out_dir=args.out, json_path=args.json,
                      event_rate=args.event_rate, request_rate=args.request_rate,
                      warmup_min=min(args.warmup, args.minutes / 2), interval_s=args.interval)
    print("fairstream bench soak")
    _emit({**report["totals"], **{f"{n}_rss_growth_pct": v for n, v in
                                  report["targets"]["rss_growth_pct"].items()},
           "lag_per_min": report["summary"]["lag"]["per_min"],
           "rss_growth_met": report["targets"]["rss_growth_met"],
           "lag_flat": report["targets"]["lag_flat"]}, None)
    return 0


def cmd_eval_sim(args: argparse.Namespace) -> int:
    from stream.evaluate.report import format_table
    from stream.evaluate.sim import run_eval_sim

    kw = {} if args.only is None else {"fairstream": args.only, "peers": []}
    results = run_eval_sim(_settings(args), events=args.events, seeds=args.seeds,
                           out_dir=args.out, json_path=args.json, progress=True,
                           exposure_target=args.exposure_target, **kw)
    print(format_table(results))
    print(f"written: {Path(args.out) / 'report.md'}")
    return 0


def cmd_eval_ids(args: argparse.Namespace) -> int:
    from stream.evaluate.idembed import run_idembed_eval

    results = run_idembed_eval(_settings(args), events=args.events, seeds=range(args.seeds),
                               steps=args.steps, out_dir=args.out, json_path=args.json)
    print((Path(args.out) / "report.md").read_text())
    print(f"written: {Path(args.out) / 'report.md'}, {Path(args.out) / 'ids.png'}")
    return 0 if results else 1


def cmd_eval_ope(args: argparse.Namespace) -> int:
    from stream.evaluate.ope import run_eval_ope

    settings = _settings(args)
    run_eval_ope(settings.data.cache_dir, args.out, json_path=args.json,
                 bootstrap=args.resamples, seed=args.seed, progress=True)
    print(f"written: {Path(args.out) / 'report.md'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = cli_help.Parser(prog="fairstream", description=DESCRIPTION)
    p.add_argument("--config", type=Path,
                   help="settings TOML file; FAIRSTREAM_* environment variables override it "
                        "(default: built-in settings)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="debug logging, and the traceback of a failure")
    p.add_argument("--version", action="version", version=f"fairstream {cli_help.version()}",
                   help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (Tansu)")
    b.add_argument("--port", type=int, default=9092, help="port to listen on")
    b.set_defaults(func=cmd_broker)

    t = sub.add_parser("topics", help="topic administration").add_subparsers(
        dest="action", required=True)
    tc = t.add_parser("create", help="create missing topics (idempotent)")
    tc.add_argument("--bootstrap")
    tc.set_defaults(func=cmd_topics_create)

    d = sub.add_parser("data", help="data sets").add_subparsers(dest="action", required=True)
    df = d.add_parser("fetch", help="fetch MovieLens-100K and the Open Bandit sample")
    # checked by type, not choices: argparse checks choices of an empty nargs="*" against
    # the empty list itself, so `fairstream data fetch` alone would be refused
    df.add_argument("datasets", nargs="*", type=_dataset, metavar="{ml100k,obd}",
                    help="which ones: ml100k, obd (default: both)")
    df.set_defaults(func=cmd_data_fetch)

    pr = sub.add_parser("produce", help="event producers").add_subparsers(
        dest="what", required=True)
    pc = pr.add_parser("catalog", help="publish the item catalog to fairstream.items")
    pc.add_argument("--bootstrap")
    pc.set_defaults(func=cmd_produce_catalog)
    rp = pr.add_parser("replay", help="publish logged events in timestamp order")
    rp.add_argument("--dataset", choices=["ml100k"], default="ml100k",
                    help="logged data set to replay")
    rp.add_argument("--rate", type=float, help="events per second (default: as fast as possible)")
    rp.add_argument("--limit", type=int,
                    help="number of ratings to replay (default: all 100,000)")
    rp.add_argument("--bootstrap")
    rp.set_defaults(func=cmd_produce_replay)

    w = sub.add_parser("worker", help="run a learning worker")
    w.add_argument("--bootstrap")
    w.add_argument("--exit-when-idle", type=float, metavar="SECONDS",
                   help="exit once caught up and idle this long, for batch runs "
                        "(default: run until SIGTERM)")
    w.set_defaults(func=cmd_worker)

    fg = sub.add_parser("forget", help="erase a user: markers on the erasure topic make every "
                                       "worker and server drop the user's profile")
    fg.add_argument("user_id", metavar="USER_ID", help="the user's id as the apps know it")
    fg.add_argument("--bootstrap")
    fg.set_defaults(func=cmd_forget)

    cli_experiment.add_parser(sub)

    bench = sub.add_parser("bench", help="benchmarks (figures beside a same-run baseline)")
    bsub = bench.add_subparsers(dest="what", required=True)
    bl = bsub.add_parser("learners", help="embedding, fine-tune and consumer-stall figures")
    bl.add_argument("--items", type=int, default=2000, help="catalog items to embed")
    bl.add_argument("--device", choices=["auto", "cpu", "cuda"],
                    help="where to embed and fine-tune (default: model.device)")
    bl.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    bl.add_argument("--cache", help="embedding cache dir (default: a fresh temporary one)")
    bl.add_argument("--seconds", type=float, default=8.0,
                    help="length of each consumer window (idle, fine-tuning, idle)")
    bl.set_defaults(func=cmd_bench_learners)

    bs = bsub.add_parser("serve", help="/recommend throughput and latency from a second process")
    bs.add_argument("--bootstrap", help="use this broker instead of starting one")
    bs.add_argument("--requests", type=int, default=20_000,
                    help="requests in the saturation phase")
    bs.add_argument("--duration", type=float, default=10.0, help="seconds per load phase")
    bs.add_argument("--rate", type=float, default=200.0, help="paced phase, requests/s")
    bs.add_argument("--candidates", type=int, default=100, help="candidates per request")
    bs.add_argument("--no-experiment", action="store_true",
                    help="skip the rounds with and without an experiment split")
    bs.add_argument("--json", type=Path)
    bs.set_defaults(func=cmd_bench_serve)
    bsr = bsub.add_parser("serve-reads",
                          help="a server's Kafka reads and memory in both serve.profiles "
                               "modes, as event volume grows at the same users")
    bsr.add_argument("--bootstrap", help="use this broker instead of starting one")
    bsr.add_argument("--users", type=int, default=5_000, help="users with traffic")
    bsr.add_argument("--impressions", type=int, default=4,
                     help="impressions per user at factor 1")
    bsr.add_argument("--clicks", type=int, default=2, help="clicks per user in each phase")
    bsr.add_argument("--factors", type=_int_list, default=[1, 10],
                     help="event volume factors, separated by commas (each multiplies the "
                          "impressions)")
    bsr.add_argument("--json", type=Path, help="also write the results as JSON here")
    bsr.set_defaults(func=cmd_bench_serve_reads)
    bp = bsub.add_parser("pipeline", help="events/s learned end to end vs the raw consume rate")
    bp.add_argument("--events", type=int,
                    help="MovieLens ratings in the timed backlog (default: 98,000; 2,000 more "
                         "feed the latency phase)")
    bp.add_argument("--bootstrap", help="use this broker instead of starting one")
    bp.add_argument("--out", default="runs/bench-pipeline")
    bp.add_argument("--json", type=Path)
    bp.set_defaults(func=cmd_bench_pipeline)
    bsc = bsub.add_parser("scale", help="1, 2, 4 workers with the statistics exchange; "
                                        "checkpoint and restore costs (docs/scaling.md)")
    bsc.add_argument("--ratings", type=int, default=20_000, help="MovieLens ratings replayed")
    bsc.add_argument("--overhead-ratings", type=int, default=100_000,
                     help="MovieLens ratings in the backlog that measures the exchange's cost")
    bsc.add_argument("--overhead-repeats", type=int, default=3,
                     help="exchange on/off pairs for the overhead (median and each pair)")
    bsc.add_argument("--workers", type=_int_list, default=[1, 2, 4],
                     help="worker counts to measure, comma-separated")
    bsc.add_argument("--users", type=_int_list, default=[10_000, 100_000, 1_000_000],
                     help="synthetic user counts for the checkpoint and restore costs")
    bsc.add_argument("--bootstrap", help="use this broker instead of starting one")
    bsc.add_argument("--out", default="runs/bench-scale", help="where the results go")
    bsc.add_argument("--json", type=Path, help="also write the results as JSON here")
    bsc.set_defaults(func=cmd_bench_scale)
    bpr = bsub.add_parser("profiles", help="profile stores: memory beside RocksDB and SQLite "
                                           "on disk (docs/scaling.md)")
    bpr.add_argument("--users", type=_int_list, default=[100_000, 1_000_000],
                     help="user counts, comma-separated")
    bpr.add_argument("--repeats", type=int, default=3, help="runs of every case")
    bpr.add_argument("--stores", default="memory,rocksdb,sqlite",
                     help="stores to measure, comma-separated")
    bpr.add_argument("--memory-share", type=float, default=0.1,
                     help="share of the users the disk stores hold in memory")
    bpr.add_argument("--updates", type=int, default=50_000, help="observes per pattern")
    bpr.add_argument("--gets", type=int, default=20_000, help="timed random gets")
    bpr.add_argument("--dir", help="where the stores' files go (default: the temp dir)")
    bpr.add_argument("--json", type=Path, help="also write the results as JSON here")
    bpr.set_defaults(func=cmd_bench_profiles)
    bb = bsub.add_parser("bandits", help="update and scoring cost beside a naive numpy baseline")
    bb.add_argument("--dims", type=_int_list, default=[32, 64, 128],
                    help="LinUCB feature dims (comma-separated)")
    bb.add_argument("--items", type=_int_list, default=[10_000, 1_000_000],
                    help="items the hybrid holds (comma-separated)")
    bb.add_argument("--z", choices=["bias", "attributes"], default="bias",
                    help="the hybrid's per-item context (bandit.item_context)")
    bb.add_argument("--seed", type=int, default=0)
    bb.add_argument("--json", type=Path)
    bb.set_defaults(func=cmd_bench_bandits)

    bk = bsub.add_parser("soak", help="worker and server processes under steady load: "
                                      "RSS, fds, threads and lag over time")
    bk.add_argument("--minutes", type=float, required=True, help="length of the run")
    bk.add_argument("--warmup", type=float, default=5.0,
                    help="minutes before the slopes are fitted (at most half the run)")
    bk.add_argument("--event-rate", type=float, default=400.0, help="replayed events/s")
    bk.add_argument("--request-rate", type=float, default=40.0,
                    help="HTTP requests/s (/recommend and /feedback, alternating)")
    bk.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    bk.add_argument("--out", default="runs/bench-soak")
    bk.add_argument("--json", type=Path)
    bk.set_defaults(func=cmd_bench_soak)

    srv = sub.add_parser("serve", help="HTTP API: /recommend on the latest verified policy")
    srv.add_argument("--bootstrap")
    srv.add_argument("--host")
    srv.add_argument("--port", type=int)

    dq = sub.add_parser("dlq", help="look at the dead-letter topic").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    dt = dq.add_parser("tail", help="the newest dead letters: reason, source record, payload",
                       description="Print the newest records of the dead-letter topic, "
                                   "oldest first: time, reason, the record it came from "
                                   "(topic/partition/offset), the detail, and the start of "
                                   "the key and the payload.")
    dt.add_argument("-n", type=int, default=10, help="how many")
    dt.add_argument("--reason", help="only this reason, e.g. unknown_item (default: any)")
    dt.add_argument("--scan", type=int, default=10_000,
                    help="records read back from the end of each partition")
    dt.add_argument("--bootstrap")
    dt.set_defaults(func=cmd_dlq_tail)

    po = sub.add_parser("policy", help="look at published policies").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    ps = po.add_parser("show", help="verify and describe a published policy",
                       description="Find this consumer group's newest published policy (or "
                                   "--version), verify its checksum and signature with "
                                   "policy.signing_key as a server would, and describe it: "
                                   "feature space, updates, hyper-parameters and the fairness "
                                   "window published with it. No key is printed.")
    ps.add_argument("--version", type=int, help="this version (default: the newest)")
    ps.add_argument("--bootstrap")
    ps.set_defaults(func=cmd_policy_show)
    srv.set_defaults(func=cmd_serve)

    ev = sub.add_parser("eval", help="evaluation against peers, with reports and plots")
    esub = ev.add_subparsers(dest="what", required=True)
    es = esub.add_parser("sim", help="closed-loop MovieLens simulation: fairstream vs peers")
    es.add_argument("--events", type=int, default=20_000, help="arrivals per seed")
    es.add_argument("--seeds", type=int, default=3, help="seeds (independent runs) per policy")
    es.add_argument("--out", default="runs/eval-sim")
    es.add_argument("--json", type=Path)
    es.add_argument("--exposure-target", choices=("candidates", "merit"), default="candidates",
                    help="what the exposure controller's λ sweep pushes exposure toward")
    es.add_argument("--only", nargs="+", metavar="POLICY",
                    help="run only these fairstream policies and the sweep, no peers "
                         "(e.g. a trade-off curve on its own)")
    es.set_defaults(func=cmd_eval_sim)
    ei = esub.add_parser("ids", help="does the fine-tune gain from trainable item id "
                                     "embeddings beside the hybrid's per-item terms?")
    ei.add_argument("--events", type=int, default=20_000, help="arrivals per seed")
    ei.add_argument("--seeds", type=int, default=3, help="seeds (independent runs)")
    ei.add_argument("--steps", type=int, help="training steps per run (default: finetune.steps)")
    ei.add_argument("--out", default="runs/eval-ids", help="report.md and ids.png go here")
    ei.add_argument("--json", type=Path, help="also write the results as JSON here")
    ei.set_defaults(func=cmd_eval_ids)
    eo = esub.add_parser("ope", help="off-policy estimates on the Open Bandit Dataset sample")
    eo.add_argument("--out", default="runs/eval-ope")
    eo.add_argument("--json", type=Path)
    eo.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for CIs")
    eo.add_argument("--seed", type=int, default=0)
    eo.set_defaults(func=cmd_eval_ope)

    ch = sub.add_parser("chaos", help="replay with hostile messages, SIGKILL the worker again "
                                      "and again, compare with a clean run (JSON summary)")
    ch.add_argument("--ratings", type=int, default=3000, help="MovieLens ratings to replay")
    ch.add_argument("--hostile", type=int, default=600, help="hostile messages interleaved")
    ch.add_argument("--random-kills", type=int, default=8,
                    help="kills at seeded random moments (besides 14 chosen ones)")
    ch.add_argument("--seed", type=int, default=0)
    ch.add_argument("--out", default="runs/chaos")
    ch.set_defaults(func=cmd_chaos)

    dm = sub.add_parser("demo", help="closed-loop demo on MovieLens-100K, all embedded")
    dm.add_argument("--events", type=int, help="arrivals to simulate (default: all 100,000)")
    dm.add_argument("--out", default="runs/latest")
    dm.add_argument("--seed", type=int, default=0)
    dm.set_defaults(func=cmd_demo)
    cli_help.finish(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a failure is one line on stderr (see :mod:`stream.cli_errors`)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        return args.func(args)
    except (Exception, KeyboardInterrupt) as exc:
        return cli_errors.report(exc, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
