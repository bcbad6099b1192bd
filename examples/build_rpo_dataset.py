"""Build RPO preference pairs (critique -> instructions -> edit -> verify) and optionally push them to the Hub.

Offline, in the shapes world (a generator with deliberate mistakes, the rule-based critic and editor):

    python examples/build_rpo_dataset.py --config examples/configs/build_rpo_shapes.yaml

Several processes split the prompts (no duplicates) and the main process merges the shards:

    accelerate launch --num_processes 2 examples/build_rpo_dataset.py --config examples/configs/build_rpo_shapes.yaml

SDXL with your own critic and editors (import paths `module:attribute`; a class is instantiated without arguments,
so put a configured instance in a small module of yours to pass arguments):

    accelerate launch examples/build_rpo_dataset.py --prompts prompts.txt \\
        --generator stabilityai/stable-diffusion-xl-base-1.0 --torch_dtype float16 \\
        --critic my_stages:critic --editor my_stages:instruct_editor my_stages:inpaint_editor \\
        --reward_funcs my_stages:reward --critic_recheck --change_guard \\
        --output_dir rpo-sdxl-pairs --push_to_hub --hub_dataset_id me/rpo-sdxl-pairs

With a served VLM as the critic, InstructPix2Pix as the editor, and a push to the Hub at the end:

    accelerate launch examples/build_rpo_dataset.py --config examples/configs/build_rpo_served_vlm.yaml

Re-running the same command resumes: finished shards in `--output_dir` are kept, only missing ones are built.
The same works as `trl-rpo build-dataset ...`; this script calls the function the command wraps.
"""

from trl import TrlParser

from trl_rpo.cli import BuildDatasetArguments, build_dataset
from trl_rpo.data import RichPreferenceConfig


def main(script_args: BuildDatasetArguments, config: RichPreferenceConfig) -> None:
    # build_dataset resolves the stages (with critic_kwargs / editor_kwargs), builds or resumes the shards and
    # pushes the dataset and its card from the main process when push_to_hub is set.
    builder = build_dataset(script_args, config)
    print(f"{builder.stats['kept']} pairs in {config.output_dir}; counts: {builder.stats}")


if __name__ == "__main__":
    parser = TrlParser((BuildDatasetArguments, RichPreferenceConfig))
    main(*parser.parse_args_and_config())
