"""The export's model card shows every measure evaluate recorded, each named with its version and how
it was measured (fastflux_core/model_card.py)."""

from fastflux_core.model_card import model_card

BLOCK_MAP = {"ratio": 0.1, "n_pruned": 1, "n_blocks": 12, "chain_step": 1, "reuse": True,
             "replaced_blocks": [{"index": 11, "kind": "single", "name": "s07", "path": "single_transformer_blocks.7",
                                  "replacement": "brll"}],
             "params_base": 100, "params_pruned": 90,
             "base": {"source": "flux", "path": "/models/FLUX.1-dev", "config_sha256": "ab"}, "training_data": {}}


def test_the_card_names_each_score_with_its_version_and_interval():
    metrics = {"fid": 1.5, "clip": 30.1, "base_clip": 30.5, "clip_kind": "clip_score", "eval_images": 544,
               "hps": 0.281, "base_hps": 0.29, "hps_version": "v2.0", "imagereward": 0.91, "base_imagereward": 1.02,
               "psnr": 24.25, "psnr_ci_low": 23.5, "psnr_ci_high": 25.0, "ssim": 0.8125, "lpips": 0.125,
               "flops": 6.95e13, "flops_base": 7.44e13, "flops_ratio": 0.934}
    card = model_card(BLOCK_MAP, metrics, {})
    assert "| HPS v2.0 | 0.29 | 0.281 | HPS v2.0 checkpoint" in card
    assert "| ImageReward v1.0 | 1.02 | 0.91 |" in card
    assert "| PSNR vs the base's image (dB) | — | 24.25 | torchmetrics, each image against the base's from the same " \
           "noise; 95 % interval over images [23.5, 25] |" in card
    assert "| SSIM vs the base's image | — | 0.8125 |" in card and "| LPIPS vs the base's image | — | 0.125 |" in card
    assert "| TFLOPs per transformer forward | 74.4 | 69.5 |" in card
    plain = model_card(BLOCK_MAP, {k: v for k, v in metrics.items() if k in ("fid", "clip", "flops", "flops_base",
                                                                            "flops_ratio", "eval_images")}, {})
    assert "HPS" not in plain and "ImageReward" not in plain and "PSNR" not in plain
