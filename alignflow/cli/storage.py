"""`alignflow storage up|down|status`: a local S3 server (SeaweedFS) for the store."""

from __future__ import annotations


def add_parsers(sub) -> None:
    storage = sub.add_parser("storage", help="a local S3 server (SeaweedFS) for the store")
    storage.set_defaults(func=run_storage)
    verbs = storage.add_subparsers(dest="storage_command", required=True)
    for name, text in (("up", "start it (loopback, free port) and print how to use it"), ("down", "stop it"),
                       ("status", "is it running?")):
        verbs.add_parser(name, help=text)


def run_storage(args) -> int:
    from alignflow.home import home_dir
    from storage import seaweed

    home = home_dir("storage")
    if args.storage_command == "up":
        info = seaweed.up(home)
        print(f"SeaweedFS S3 at {info['endpoint']} (pid {info['pid']}, data in {home / 'data'})")
        print(f"credentials: {info['credentials_file']} (mode 0600). To use it:")
        print(f"  source {info['credentials_file']}")
        print(f"  alignflow run deployments/demo.yaml --store s3://{info['bucket']}/demo")
    elif args.storage_command == "down":
        print("stopped" if seaweed.down(home) else "not running")
    else:
        info = seaweed.status(home)
        print(f"running at {info['endpoint']} (pid {info['pid']}); env: {info['credentials_file']}" if info
              else "not running")
    return 0
