"""BibTeX of the papers and software trl-rpo implements: cited by model cards and dataset cards alike."""

DIFFUSION_DPO_CITATION = """@inproceedings{wallace2024diffusion,
    title     = {{Diffusion Model Alignment Using Direct Preference Optimization}},
    author    = {Bram Wallace and Meihua Dang and Rafael Rafailov and Linqi Zhou and Aaron Lou and Senthil Purushwalkam and Stefano Ermon and Caiming Xiong and Shafiq Joty and Nikhil Naik},
    booktitle = {{IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)}},
    year      = 2024,
    eprint    = {arXiv:2311.12908}
}"""

RPO_CITATION = """@article{zhao2025rpo,
    title   = {{Fine-Tuning Diffusion Generative Models via Rich Preference Optimization}},
    author  = {Hanyang Zhao and Haoxian Chen and Yucheng Guo and Genta Indra Winata and Tingting Ou and Ziyu Huang and David D. Yao and Wenpin Tang},
    year    = 2025,
    journal = {arXiv preprint arXiv:2503.11720}
}"""

TAILORPO_CITATION = """@article{ren2025tailorpo,
    title   = {{Refining Alignment Framework for Diffusion Models with Intermediate-Step Preference Ranking}},
    author  = {Jie Ren and Yuhang Zhang and Dongrui Liu and Xiaopeng Zhang and Qi Tian},
    year    = 2025,
    journal = {arXiv preprint arXiv:2502.01667}
}"""

DIFFUSION_NFT_CITATION = """@inproceedings{zheng2026diffusionnft,
    title     = {{DiffusionNFT: Online Diffusion Reinforcement with Forward Process}},
    author    = {Kaiwen Zheng and Huayu Chen and Haotian Ye and Haoxiang Wang and Qinsheng Zhang and Kai Jiang and
                 Hang Su and Stefano Ermon and Jun Zhu and Ming-Yu Liu},
    booktitle = {International Conference on Learning Representations},
    year      = 2026,
    note      = {arXiv:2509.16117}
}"""

TRL_CITATION = """@software{vonwerra2020trl,
    title   = {{TRL: Transformers Reinforcement Learning}},
    author  = {von Werra, Leandro and Belkada, Younes and Tunstall, Lewis and Beeching, Edward and Thrush, Tristan and Lambert, Nathan and Huang, Shengyi and Rasul, Kashif and Gallouédec, Quentin},
    license = {Apache-2.0},
    url     = {https://github.com/huggingface/trl},
    year    = {2020}
}"""

__all__ = ["DIFFUSION_DPO_CITATION", "DIFFUSION_NFT_CITATION", "RPO_CITATION", "TAILORPO_CITATION", "TRL_CITATION"]
