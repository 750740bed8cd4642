"""Work spread over a Ray cluster, for the stages whose `resources.engine` is `ray`.

    local.py    a cluster on this machine: `alignflow ray up|down|status`
    driver.py   the trainer child for engine ray: submits Ray Train's TorchTrainer, classifies its failure
    worker.py   what each Ray Train worker runs: inputs from the store, the stage's recipe, checkpoints to it
    fanout.py   sample's and judge's answers on Ray workers, joined in batch order (same digest for any count)
    kuberay.py  `alignflow ray k8s SPEC`: the KubeRay RayCluster for production
"""
