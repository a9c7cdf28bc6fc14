"""Convert CrowdHuman odgt files to COCO json: python tools/crowdhuman_to_coco.py --root data/CrowdHuman

A thin entry point; the command lives in `date_jax/commands/crowdhuman_to_coco.py`.
"""
from date_jax.commands.crowdhuman_to_coco import main

if __name__ == "__main__":
    main()
