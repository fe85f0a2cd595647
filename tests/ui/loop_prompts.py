"""Prompts of the browser test's preference loop: round 1 votes train the adapter, round 2 (never trained on)
shows whether it wins. Short general questions, where the base rambles and a brief answer is easy to see."""

ROUND1 = [
    "Why is the sky blue?", "What causes rain?", "How do plants make food?", "What is gravity?",
    "Why do we have seasons?", "How does a rainbow form?", "What is a volcano?", "Why is the ocean salty?",
    "How do bees make honey?", "What is the moon made of?", "Why do cats purr?", "How does the heart work?",
    "What is electricity?", "Why do leaves fall in autumn?", "How do birds fly?", "What is a black hole?",
    "Why do we sleep?", "How does a compass work?", "What is photosynthesis?", "Why is snow white?",
    "How do fish breathe?", "What are clouds made of?", "Why does ice float?", "How do magnets work?",
    "What is the sun?", "Why do stars twinkle?", "How does sound travel?", "What is a desert?",
    "Why do onions make you cry?", "How do vaccines work?", "What is an earthquake?", "Why is grass green?",
]
ROUND2 = [
    "How do airplanes stay in the air?", "What is thunder?", "Why do we yawn?", "How do trees grow?",
    "What is a glacier?", "Why does the moon change shape?", "How do our eyes see color?", "What is wind?",
    "Why do apples turn brown?", "How do spiders make webs?", "What is a tornado?", "Why is the sea blue?",
    "How does a refrigerator keep food cold?", "What is a comet?", "Why do dogs wag their tails?",
    "How does soap clean things?",
]
# A small fast recipe for on-policy pairs (the base's own answers against its prompted, brief ones): every
# linear module, a high learning rate, and RPO's SFT term on the chosen answers so generation moves in a few
# dozen steps (DPO alone mostly re-scores the pairs; see docs/training.md).
LOOP_RECIPE = """\
description: Brief answers, learned from blind arena votes (browser test).
lora_r: 8
lora_alpha: 16
target_modules: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj
learning_rate: 1.0e-3
max_steps: 12
batch_size: 8
max_length: 192
beta: 0.1
rpo_alpha: 1.0
val_fraction: 0
early_stopping_patience: 0
logging_steps: 1
seed: 7
"""
