"""The human study of Kim et al. 2018 sec. 3, as a web application: people record themselves
(sec. 3.1), others take the four matching experiments (sec. 3.2), and the analysis gives Table 1
beside our model on the same trials (sec. 3.3). See docs/study.md."""
