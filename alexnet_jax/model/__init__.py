"""The network: AlexNet, its layers (LRN, grouped convolutions), pooling and
its kernels. Imports nothing of the project.
"""
