"""Files: atomic writes, images and their regions read in any format, raster scenes read and written by windows,
scenes of band files (Sentinel-2 folders, SAFE, STAC Items), vectors, the listing of input images, run locks, the
portable model file and run checkpoints read safely."""
from lemevit.io.atomic import atomic_folder, atomic_path, remove_stale_temporaries

__all__ = ["atomic_folder", "atomic_path", "remove_stale_temporaries"]
