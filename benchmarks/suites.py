"""The accuracy suites: (label, config module, config argument, paper figure or None) each."""

SUITES = {
    # Bartunov et al. 2018, Table 1(a): best test error within 500 epochs (TP rows: the
    # alternating schedule is the default).
    "bartunov_mnist_fc": [
        ("BP", "bartunov", "mnist,fc,bp", "1.48"),
        ("FA", "bartunov", "mnist,fc,fa", "1.85"),
        ("DFA", "bartunov", "mnist,fc,dfa", "2.75"),
        ("DTP, parallel", "bartunov", "mnist,fc,dtp,parallel", "2.86"),
        ("DTP, alternating", "bartunov", "mnist,fc,dtp,alternating", "1.83"),
        ("SDTP, parallel", "bartunov", "mnist,fc,sdtp,parallel", "3.52"),
        ("SDTP, alternating", "bartunov", "mnist,fc,sdtp,alternating", "2.28"),
        ("AO-SDTP, parallel", "bartunov", "mnist,fc,ao_sdtp,parallel", "2.93"),
        ("AO-SDTP, alternating", "bartunov", "mnist,fc,ao_sdtp,alternating", "1.86"),
    ],
    # Every feedforward rule on Bartunov et al.'s MNIST MLP (784-256x5-10, tanh,
    # Adam at the Table 5 settings; KP and sign-symmetry, not in the paper, use FA's),
    # and the burst rules on their own sigmoid MLP (784-500x3-10, SGD; the figures are
    # Greedy et al.'s best test errors, over 5 seeds and about 200 epochs).
    "compare_mnist_fc": [
        ("BP", "bartunov", "mnist,fc,bp", "1.48"),
        ("FA", "bartunov", "mnist,fc,fa", "1.85"),
        ("DFA", "bartunov", "mnist,fc,dfa", "2.75"),
        ("KP", "bartunov", "mnist,fc,kp", None),
        ("sign-symmetry", "bartunov", "mnist,fc,sign_symmetry", None),
        ("DTP", "bartunov", "mnist,fc,dtp", "1.83"),
        ("SDTP", "bartunov", "mnist,fc,sdtp", "2.28"),
        ("AO-SDTP", "bartunov", "mnist,fc,ao_sdtp", "1.86"),
        ("TP", "bartunov", "mnist,fc,tp", None),
        ("BurstCCN", "burstccn", "mnist", "1.84"),
        ("Burstprop", "burstccn", "burstprop_mnist_tuned", "1.75"),
        ("RDD", "rdd", "mnist_fc,rdd", None),
        ("Weight mirror", "rdd", "mnist_fc,weight_mirror", None),
    ],
    # Laborieux & Zenke 2024, Fashion-MNIST MLP; the paper's Table 1 and
    # Fig. 4 numbers were not available (only the abstract could be read, and
    # no secondary source quotes them), so none is quoted.
    "hep_fmnist": [
        ("hEP N=2 beta=0.05, angle 0", "hep_fmnist", "table1,2,0.05", None),
        ("hEP N=4 beta=0.5, angle 0", "hep_fmnist", "table1,4,0.5", None),
        ("hEP N=0, angle 90, no homeostasis", "hep_fmnist", "fig4_reciprocal,0", None),
        ("hEP N=0, angle 90, homeostasis 1.0", "hep_fmnist", "fig4_reciprocal,1.0", None),
    ],
}
