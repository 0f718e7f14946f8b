"""Face alignment: MTCNN detection (facenet-pytorch) and the 5-point similarity warp."""
