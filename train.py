"""Train a language model with SPPO.

python train.py                                  # CPU default: SmolLM2-135M-Instruct on arithmetic
python train.py experiment=smoke                 # tiny random model, same real path, under a minute
python train.py -m experiment=smoke loss.eta=1,10  # Hydra multirun
python train.py --cfg job                        # print the composed config
"""

import hydra
from omegaconf import DictConfig

import sppo_pl.config  # noqa: F401  (registers the resolvers the configs use)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from sppo_pl.training import train

    return train(cfg)


if __name__ == "__main__":
    main()
