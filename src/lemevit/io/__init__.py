"""Files: atomic writes, raster scenes read and written by windows, the listing of input images, run locks."""
from lemevit.io.atomic import atomic_folder, atomic_path, remove_stale_temporaries

__all__ = ["atomic_folder", "atomic_path", "remove_stale_temporaries"]
