"""Precompute Diffusion-DPO latents in every process of an `accelerate launch` and write what each one saw.

Used by tests/test_distributed.py. Each process writes `rank-<r>.json` (process count, the rows it encoded) and
`rank-<r>.npz` (the whole precomputed dataset as it reads it after the shards are gathered).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from accelerate import PartialState

from tests._helpers import wide_preference_pairs
from trl_rpo import DiffusionDPOConfig, DiffusionDPOTrainer
from trl_rpo.testing import tiny_lora_config, tiny_sdxl_pipeline

COLUMNS = ("chosen_latents", "rejected_latents", "prompt_embeds", "pooled_prompt_embeds", "chosen_time_ids")


class CountingDPO(DiffusionDPOTrainer):
    """Remembers the rows this process encoded."""

    encoded_rows: list[int] = []

    def _encode_rows(self, batch, indices):
        CountingDPO.encoded_rows.extend(indices)
        return super()._encode_rows(batch, indices)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--cache_dir", required=True)
    parser.add_argument("--rows", type=int, default=6)
    cli = parser.parse_args()
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1  # gloo needs a launcher's environment
    state = PartialState(cpu=True, backend="gloo") if several else PartialState(cpu=True)
    out = Path(cli.output_dir)
    args = DiffusionDPOConfig(
        output_dir=str(out / "run"), precompute_latents=True, precompute_cache_dir=cli.cache_dir, random_crop=True,
        random_flip=True, resolution=32, per_device_train_batch_size=2, report_to=[], seed=0, disable_tqdm=True,
        accelerator_config={"use_configured_state": True},
    )  # fmt: skip
    trainer = CountingDPO(model=tiny_sdxl_pipeline(), args=args, train_dataset=wide_preference_pairs(cli.rows),
                          peft_config=tiny_lora_config())  # fmt: skip
    data = trainer.train_dataset
    out.mkdir(parents=True, exist_ok=True)
    np.savez(
        out / f"rank-{state.process_index}.npz", **{k: np.stack([np.asarray(r[k]) for r in data]) for k in COLUMNS}
    )
    record = {"rank": state.process_index, "num_processes": state.num_processes,
              "encoded_rows": sorted(set(CountingDPO.encoded_rows)), "prompts": list(data["prompt"])}  # fmt: skip
    (out / f"rank-{state.process_index}.json").write_text(json.dumps(record))
    state.wait_for_everyone()


if __name__ == "__main__":
    main()
