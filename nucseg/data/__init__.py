"""Data: readers (one module per annotation format), synthetic images, and (with torch) datasets and augmentation."""
