"""Training loops: autoencoders (section 4.2, appendix A.1), classifiers (teachers), students
(section 5.1) and the lifelong stream (section 5.2). All train G fused models at once."""
