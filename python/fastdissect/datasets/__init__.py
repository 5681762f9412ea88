"""Concept data sets: the Broden reader, users' own data, the built-in set and the packed mask store.

Every data set yields `Sample`s (image as stored, label planes at the label resolution, image-level
label ids) and carries `num_concepts`, `concept_names`, `category_names` and `primary_category`.
"""

from .broden import Broden, DatasetError, write_broden
from .builtin import builtin, color_name
from .coco import from_coco
from .custom import SegmentationDataset, from_label_pngs
from .download import DownloadError, download_broden
from .packed import PackedMasks, open_packed, pack
from .rebuild import rebuild
from .sample import Batch, Sample, collate, to_model_input
from .tags import ImageTags, from_image_folder, from_tags_csv, tags_of

__all__ = ["Batch", "Broden", "ImageTags", "from_image_folder", "from_tags_csv", "tags_of", "DatasetError", "DownloadError", "PackedMasks", "Sample", "SegmentationDataset",
           "builtin", "collate", "color_name", "download_broden", "from_coco", "from_label_pngs", "open_packed", "pack", "rebuild", "to_model_input",
           "write_broden"]
