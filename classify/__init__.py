"""mgdet's second system: micro-gesture clip classification on iMiGUE (skeleton first).

Data flow: iMiGUE files -> clips (`clips.py`) -> OpenPose keypoints (`openpose.py`,
`skeleton_cache.py`) -> normalised joint / bone inputs (`skeleton.py`) -> 2s-AGCN
(`model/agcn.py`) -> scores -> metrics (`metrics.py`); `train.py` runs it, `render.py` makes a
synthetic iMiGUE to run it on.
"""
