"""Serving: the engines (vLLM, SGLang) behind one seam, and the lifecycle every engine shares.

    engine.py     the `Engine` protocol, its invariants, and the registry (`engine_for`)
    vllm.py       everything vLLM's own: flags, environment, adapters, metrics, kernels, offline generation
    sglang.py     the same for SGLang
    settings.py   stages.deploy's settings, read the same way by every engine
    records.py    the typed local record of each pipeline's server
    access.py     who can reach a server: bind address, api key; HTTP to it
    lifecycle.py  launch, health, smoke request, drain, stop, release
    rollout.py    blue/green: what a pipeline's name serves, switched without a gap
    load_test.py  evalscope perf against a live endpoint
    k8s.py        the same server as a Kubernetes Deployment

It imports only alignflow/ and storage/; the stages (tasks/) import it.
"""
