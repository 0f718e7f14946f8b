"""Super-resolution front end: SR networks trained on the seam, scored by PSNR/SSIM, used by
``lrfr eval --sr`` (probes super-resolved before recognition) and ``lrfr sr`` (files + contact
sheet). See :mod:`lrfr_cli.models.sr` for the networks and :mod:`.metrics` for the metrics."""
