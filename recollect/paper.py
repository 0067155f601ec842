"""The numbers the paper reports, once. Chapters show them labelled "paper".

Transcribed from the text in ``shared/paper`` (Riemer, Franceschini, Klinger): Tables 1-6 and the
numbers quoted in sections 5.1 and 5.2. Accuracies are in percent; distortions are mean absolute
pixel errors with pixels / 255.
"""
from __future__ import annotations

# Table 5: categorical autoencoders of Figure 2, (c, l) -> (compression, distortion)
TABLE5 = {
    (6, 20): (209.067, 0.06609), (10, 20): (125.440, 0.04965), (6, 16): (261.333, 0.07546),
    (12, 10): (130.667, 0.05497), (10, 14): (156.800, 0.05410), (24, 3): (130.667, 0.05988),
    (38, 2): (165.053, 0.05785), (6, 2): (1045.333, 0.13831), (40, 3): (78.400, 0.04158),
    (20, 2): (313.600, 0.08446), (8, 6): (261.333, 0.08423), (12, 6): (174.222, 0.06756),
    (30, 2): (209.067, 0.06958), (24, 6): (87.111, 0.04065), (4, 37): (261.333, 0.07795),
    (8, 15): (196.000, 0.06812), (48, 10): (32.667, 0.01649), (209, 8): (10.003, 0.01455),
    (12, 37): (87.111, 0.03996), (313, 4): (10.019, 0.01420), (392, 3): (8.000, 0.01348),
    (50, 18): (25.088, 0.01859), (168, 2): (37.333, 0.01955), (108, 3): (29.037, 0.01894),
    (62, 2): (101.161, 0.04073), (208, 2): (30.154, 0.01832), (68, 5): (30.745, 0.01849),
}

# Table 6: continuous autoencoders, h -> (compression, distortion)
TABLE6 = {1: (49.0, 0.135196), 2: (24.5, 0.124725), 3: (16.33333333, 0.0947032),
          5: (9.8, 0.0354035), 7: (7.0, 0.031808), 20: (2.45, 0.0149272)}

# Section 5.1: per-sample compression of the 10x / 50x / 100x generators (bits 168, 62, 38)
PER_SAMPLE_RATIOS = {168: 37, 62: 101, 38: 165}
MNIST_TEACHER_ACC = 99.29
MNIST_GENERATORS = {"10x": (168, 2), "50x": (62, 2), "100x": (38, 2)}

TABLE_COLUMNS = ["Real Data", "10% Sample", "2% Sample", "1% Sample", "Real x / Teacher y",
                 "10x Compress", "50x Compress", "100x Compress"]
EPISODES = [10, 100, 1000, 10000, 100000]
#: the lossless-sample columns: the fraction of the training set each keeps
SAMPLE_FRACTION = {"10% Sample": 0.10, "2% Sample": 0.02, "1% Sample": 0.01}
#: each compressed column and the lossless sample of equal total storage (eq 4)
EQUAL_STORAGE = {"10x Compress": "10% Sample", "50x Compress": "2% Sample", "100x Compress": "1% Sample"}
#: section 5.1: the 168-variable generator's parameters take 7.4x the smaller (38-variable) model's
#: total storage (its parameters plus its buffer)
PARAM_RATIO_168_VS_38 = 7.4

_T1_RANDOM = [[10.43, 9.94, 11.07, 10.70, 10.07, 10.65, 10.99, 13.89],
              [19.63, 18.16, 22.82, 22.35, 25.32, 19.34, 16.20, 21.06],
              [90.45, 88.88, 90.71, 89.93, 91.01, 90.66, 90.52, 90.03],
              [97.11, 96.83, 95.98, 94.97, 97.42, 96.77, 96.37, 95.65],
              [98.51, 97.99, 96.14, 94.92, 98.63, 98.59, 98.17, 97.75]]
_T1_ACTIVE = [[10.31, 11.64, 12.73, 11.65, 11.81, 9.95, 11.04, 10.19],
              [24.62, 15.34, 22.74, 18.41, 18.55, 14.80, 19.13, 22.57],
              [91.98, 91.60, 94.20, 93.45, 92.31, 93.45, 93.40, 92.97],
              [98.55, 97.99, 96.56, 94.47, 98.56, 98.61, 98.20, 97.53],
              [99.15, 98.21, 96.13, 94.53, 99.19, 99.18, 98.76, 98.25]]
_T2_RANDOM = [[13.64, 17.04, 14.57, 15.13, 15.87, 16.70, 11.80, 14.66],
              [36.37, 37.04, 38.35, 34.04, 38.56, 37.16, 40.09, 42.31],
              [80.54, 79.08, 78.18, 77.76, 80.00, 80.72, 80.00, 77.75],
              [91.04, 90.84, 88.38, 86.83, 90.86, 91.37, 90.60, 90.46],
              [96.66, 95.02, 91.61, 88.97, 96.60, 96.71, 96.24, 95.22]]
_T2_ACTIVE = [[21.82, 21.22, 21.28, 21.85, 15.82, 15.76, 18.34, 17.47],
              [50.22, 54.67, 54.97, 53.61, 46.76, 43.42, 44.29, 45.74],
              [84.21, 84.46, 85.37, 87.68, 86.14, 83.35, 87.66, 85.71],
              [95.91, 94.66, 91.77, 89.19, 96.48, 95.96, 95.85, 94.51],
              [97.98, 95.02, 91.61, 88.97, 98.12, 98.07, 97.67, 96.91]]


def _table(rows):
    return {(ep, col): v for ep, row in zip(EPISODES, rows) for col, v in zip(TABLE_COLUMNS, row)}


#: Table 1 (LeNet student) and Table 2 (MLP student): {sampling: {(episodes, column): accuracy}}
TABLE1 = {"random": _table(_T1_RANDOM), "active": _table(_T1_ACTIVE)}
TABLE2 = {"random": _table(_T2_RANDOM), "active": _table(_T2_ACTIVE)}
#: Table 2's active half at 100,000 episodes repeats the random half's three Sample values
#: (95.02, 91.61, 88.97): most likely a copying slip; chapters set no verdict against these cells.
SUSPECT_CELLS = {("Table 2", "active", 100000, c) for c in ("10% Sample", "2% Sample", "1% Sample")}

# Section 5.1, Omniglot distillation (one million episodes)
OMNIGLOT_TEACHER_ACC = 94.86
OMNIGLOT_GENERATORS = {"10x": (134, 2), "50x": (50, 2), "100x": (32, 2)}
OMNIGLOT_DISTILL_EPISODES = 1_000_000   # "after one million training episodes"
OMNIGLOT_DISTILL_LR = 1e-4              # appendix A.3, the ResNet-18 student
OMNIGLOT_DISTILL = {"10% Sample": 28.87, "2% Sample": 8.88, "1% Sample": 5.99,
                    "10x Compress": 87.86, "50x Compress": 74.03, "100x Compress": 51.45}

# Table 3: incremental CIFAR-100, incremental storage constraint: (method, buffer) -> retention
TABLE3 = {("online", 0): 33.3, ("rehearsal", 10): 29.4, ("rehearsal", 50): 33.4,
          ("rehearsal", 200): 43.0, ("recollection", 10): 38.9, ("recollection", 50): 47.9,
          ("recollection", 200): 51.6}
TABLE3_GENERATORS = {10: (48, 2), 50: (244, 2), 200: (620, 3)}
TABLE3_RECOLLECTIONS = 5000

# Table 4: total budget of 200 lossless examples
TABLE4 = {"rehearsal": 43.0, "GEM": 48.7, "iCaRL": 43.6, "recollection, no transfer": 43.7,
          "recollection, CIFAR-10 transfer": 49.7}
TABLE4_GENERATOR = (76, 2)
TABLE4_RECOLLECTIONS = 1392

# Section 5.2, incremental Omniglot: (method, budget, steps per example) -> retention
OMNIGLOT_LIFELONG = {("online", 10, 1): 3.5, ("rehearsal", 10, 1): 3.6, ("recollection", 10, 1): 5.0,
                     ("rehearsal", 50, 1): 4.3, ("rehearsal", 50, 3): 4.8,
                     ("recollection", 50, 1): 9.3, ("recollection", 50, 3): 13.0}
OMNIGLOT_LIFELONG_GENERATORS = {10: (62, 2), 50: (312, 2)}

# Appendix A learning rates
LR_SWEEP_FIG2 = (1e-2, 1e-3, 1e-4, 1e-5)
LR_DISTILL = (1e-3, 1e-4)
