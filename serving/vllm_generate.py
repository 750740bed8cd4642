"""Generate with vLLM's offline engine. Run by the serve env's python (it imports nothing of alignflow):

    .venv-serve/bin/python serving/vllm_generate.py JOB.json

JOB: {"model": dir, "prompts": [rendered text], "n", "temperature", "top_p", "max_tokens", "seed", "output"}.
Writes to `output`: {"completions": [[n answers] per prompt], "tokens": generated tokens, "seconds": time
spent generating, engine start excluded}.
"""

import json
import sys
import time


def main(job_path: str) -> None:
    from vllm import LLM, SamplingParams

    job = json.loads(open(job_path).read())
    llm = LLM(model=job["model"], seed=job["seed"], dtype="auto")  # the engine's seed: a per-request seed
    params = SamplingParams(n=job["n"], temperature=job["temperature"], top_p=job["top_p"],  # fails on CPU
                            max_tokens=job["max_tokens"])
    started = time.monotonic()
    tokenizer = llm.get_tokenizer()  # rendered chat text carries its own BOS: none is added again
    prompts = [{"prompt_token_ids": tokenizer.encode(text, add_special_tokens=False)} for text in job["prompts"]]
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.monotonic() - started
    completions = [[c.text.strip() for c in out.outputs] for out in outputs]
    tokens = sum(len(c.token_ids) for out in outputs for c in out.outputs)
    with open(job["output"], "w") as f:
        json.dump({"completions": completions, "tokens": tokens, "seconds": seconds}, f)


if __name__ == "__main__":  # vLLM spawns workers that re-import this file: the guard keeps them from running it
    main(sys.argv[1])
