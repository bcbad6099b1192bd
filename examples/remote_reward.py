"""A reward in its own process: serve a scorer over HTTP and train against it with `RemoteReward`.

In practice the server runs in the reward model's own environment (another machine, another torch):

    trl-rpo serve-reward --reward aesthetic --host 0.0.0.0 --port 8000     # the reward's environment
    trl-rpo grpo ... --reward_funcs http://REWARD_HOST:8000                # the trainer's

This script shows both halves in one process on the loopback interface, offline: it serves JPEG
compressibility, scores images through the client, and checks that the remote scores equal the local ones.

    python examples/remote_reward.py [--train]      # --train: a few GRPO steps on a tiny pipeline against it
"""

import argparse
import threading

from PIL import Image

from trl_rpo import RemoteReward
from trl_rpo.rewards import jpeg_compressibility
from trl_rpo.rewards.remote import make_reward_server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", action="store_true", help="also run 2 GRPO steps on a tiny pipeline")
    cli = parser.parse_args()

    server = make_reward_server(jpeg_compressibility, host="127.0.0.1", port=0)  # port 0: any free port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    reward = RemoteReward(url, name="jpeg_compressibility", batch_size=4, timeout=30, max_retries=2)
    print("server:", reward.health())

    images = [Image.effect_noise((32, 32), sigma).convert("RGB") for sigma in (5, 40, 120)]
    remote, local = reward(images, ["noise"] * 3), jpeg_compressibility(images)
    print("remote:", remote, "local:", local)
    assert remote == local

    if cli.train:
        from datasets import Dataset

        from trl_rpo import DiffusionGRPOConfig, DiffusionGRPOTrainer
        from trl_rpo.testing import tiny_lora_config, tiny_sd_pipeline

        args = DiffusionGRPOConfig(output_dir="grpo-remote-demo", max_steps=2, num_generations=2,
                                   per_device_train_batch_size=4, num_inference_steps=3, report_to=[],
                                   save_strategy="no", logging_steps=1)  # fmt: skip
        prompts = Dataset.from_dict({"prompt": ["a red square", "a blue circle"]})
        trainer = DiffusionGRPOTrainer(tiny_sd_pipeline(), reward, args=args, peft_config=tiny_lora_config(),
                                       train_dataset=prompts)  # fmt: skip
        trainer.train()
        print({k: v for k, v in trainer.state.log_history[0].items() if k.startswith(("reward", "rewards/"))})
    server.shutdown()


if __name__ == "__main__":
    main()
