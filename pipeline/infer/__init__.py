"""The trained model on new slices: the segmenter and per-slice outputs (`inference`), DICOM
CT series to DICOM SEG (`dicom_seg`, reading through `pipeline.dicom`), and the `stroke-seg`
command's options (`command`).
"""
