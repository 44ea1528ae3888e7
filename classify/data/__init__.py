"""iMiGUE clips and their skeletons: the clip index, OpenPose readers, the BODY_25 graph and
clip inputs, the keypoint cache, face boxes."""
