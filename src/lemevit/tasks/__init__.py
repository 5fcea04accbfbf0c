"""Lightning modules and the runs built on them: classification (scene recognition) and semantic
segmentation."""
