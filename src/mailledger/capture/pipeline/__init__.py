"""The processing pipeline: one route's copy walks named steps, each deciding one thing.

``steps.STEPS`` lists them in order; ``decisions`` names what a step may decide; ``context``
holds what the steps share. Each step leaves its line in the message's trace, so an operator
can answer "why wasn't this captured?" (DESIGN §5).
"""
