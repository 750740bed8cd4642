"""`alignflow ray up|down|status`: a Ray cluster on this machine, a head and worker nodes as separate
processes (distributed/local.py), for `resources.engine: ray` in development and the tests; `alignflow ray k8s
SPEC`: the KubeRay RayCluster for production (distributed/kuberay.py)."""

from __future__ import annotations

import argparse

from alignflow.cli.common import positive_int


def non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def add_parsers(sub) -> None:
    parser = sub.add_parser("ray", help="a local Ray cluster (head and worker nodes) for resources.engine: ray")
    parser.set_defaults(func=cmd_ray)
    verbs = parser.add_subparsers(dest="ray_command", required=True)
    up = verbs.add_parser("up", help="start a head and worker nodes on loopback (detached); print the address")
    up.add_argument("--nodes", type=positive_int, default=1, help="worker nodes beside the head (default 1)")
    up.add_argument("--cpus", type=positive_int, default=1, help="CPUs each node offers (default 1)")
    up.add_argument("--gpus", type=non_negative, default=0, help="GPUs each node offers (default 0)")
    verbs.add_parser("down", help="stop exactly the nodes `up` started")
    verbs.add_parser("status", help="the address and the nodes that have joined")
    k8s = verbs.add_parser("k8s", help="a KubeRay RayCluster sized for what SPEC runs on Ray (YAML on stdout)")
    k8s.add_argument("spec", metavar="SPEC")
    k8s.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a spec field, as for `alignflow run`")
    k8s.add_argument("--image", default="alignflow:latest", help="an image with alignflow (and its Ray) installed")
    k8s.add_argument("--namespace", help="the namespace (default: kubectl's)")
    k8s.add_argument("--worker-memory", default="32Gi", help="memory each worker pod requests (default 32Gi)")


def no_dashboard() -> str:
    import ray

    return f"none (Ray's dashboard needs ray[default]: pip install 'ray[default]=={ray.__version__}')"


def cmd_ray(args) -> int:
    from distributed import local

    if args.ray_command == "up":
        record = local.up(args.nodes, args.cpus, args.gpus)
        print(f"Ray cluster: {record['address']} (head pid {record['head']['pid']}, "
              f"{len(record['nodes'])} worker nodes; logs in {local.home()})")
        print(f"Ray dashboard: {record['dashboard'] or no_dashboard()}")
        print("stages with resources.engine: ray train on it; for other Ray clients:")
        print(f"  export RAY_ADDRESS={record['address']}")
        return 0
    if args.ray_command == "k8s":
        from distributed.kuberay import manifest
        from flows.spec import load_spec

        print(manifest(load_spec(args.spec, args.overrides), args.image, args.namespace, args.worker_memory), end="")
        return 0
    if args.ray_command == "down":
        stopped = local.down()
        print("stopped " + ", ".join(stopped) if stopped else "nothing was running")
        return 0
    return print_status(local.status())


def print_status(info: dict) -> int:
    from alignflow.tables import format_table

    if not info["running"]:
        print("Ray cluster: not running (`alignflow ray up` starts one)")
        return 0
    record = info["record"]
    print(f"Ray cluster: {record['address']}  dashboard {record['dashboard'] or no_dashboard()}")
    if info.get("problem"):
        print(f"the head does not answer: {info['problem']}")
        return 1
    rows = [{"node": n["NodeID"][:12], "head": "yes" if "node:__internal_head__" in n["Resources"] else "",
             "cpus": n["Resources"].get("CPU", 0), "gpus": n["Resources"].get("GPU", 0),
             "address": n["NodeManagerAddress"]} for n in info["nodes"]]
    print(format_table(rows, ["node", "head", "cpus", "gpus", "address"]))
    return 0
