"""bidsfm's bibliography: every reference bidsfm writes anywhere, in one place.

Each entry: key -> (in-text form, full reference). The methods text (``logs/CITATION.md``)
lists the entries a run actually used; model cards (bundled, pretrained or imported) cite
with :func:`reference`.
"""

from __future__ import annotations

REFERENCES: dict[str, tuple[str, str]] = {
    "bids": ("Gorgolewski et al. 2016",
             "Gorgolewski K.J. et al. (2016) The brain imaging data structure, a format for "
             "organizing and describing outputs of neuroimaging experiments. Sci Data 3:160044. "
             "doi:10.1038/sdata.2016.44"),
    "bidsapps": ("Gorgolewski et al. 2017",
                 "Gorgolewski K.J. et al. (2017) BIDS apps: Improving ease of use, accessibility, "
                 "and reproducibility of neuroimaging data analysis methods. PLoS Comput Biol "
                 "13(3):e1005209. doi:10.1371/journal.pcbi.1005209"),
    "fmriprep": ("Esteban et al. 2019",
                 "Esteban O. et al. (2019) fMRIPrep: a robust preprocessing pipeline for "
                 "functional MRI. Nat Methods 16:111-116. doi:10.1038/s41592-018-0235-4"),
    "nipype": ("Gorgolewski et al. 2011",
               "Gorgolewski K. et al. (2011) Nipype: a flexible, lightweight and extensible "
               "neuroimaging data processing framework in Python. Front Neuroinform 5:13. "
               "doi:10.3389/fninf.2011.00013"),
    "nilearn": ("Abraham et al. 2014",
                "Abraham A. et al. (2014) Machine learning for neuroimaging with scikit-learn. "
                "Front Neuroinform 8:14. doi:10.3389/fninf.2014.00014"),
    "pybids": ("Yarkoni et al. 2019",
               "Yarkoni T. et al. (2019) PyBIDS: Python tools for BIDS datasets. J Open Source "
               "Softw 4(40):1294. doi:10.21105/joss.01294"),
    "nibabel": ("Brett et al., NiBabel",
                "Brett M. et al. NiBabel: access a cacophony of neuro-imaging file formats. "
                "Zenodo. doi:10.5281/zenodo.591597"),
    "numpy": ("Harris et al. 2020",
              "Harris C.R. et al. (2020) Array programming with NumPy. Nature 585:357-362. "
              "doi:10.1038/s41586-020-2649-2"),
    "pytorch": ("Paszke et al. 2019",
                "Paszke A. et al. (2019) PyTorch: an imperative style, high-performance deep "
                "learning library. Advances in Neural Information Processing Systems 32."),
    "sklearn": ("Pedregosa et al. 2011",
                "Pedregosa F. et al. (2011) Scikit-learn: machine learning in Python. J Mach "
                "Learn Res 12:2825-2830."),
    "xcpd": ("Mehta et al. 2024",
             "Mehta K. et al. (2024) XCP-D: a robust pipeline for the post-processing of fMRI "
             "data. Imaging Neuroscience 2:1-26. doi:10.1162/imag_a_00257"),
    "cc200": ("Craddock et al. 2012",
              "Craddock R.C., James G.A., Holtzheimer P.E., Hu X.P., Mayberg H.S. (2012) A whole "
              "brain fMRI atlas generated via spatially constrained spectral clustering. Hum "
              "Brain Mapp 33(8):1914-1928. doi:10.1002/hbm.21333"),
    "schaefer": ("Schaefer et al. 2018",
                 "Schaefer A. et al. (2018) Local-global parcellation of the human cerebral "
                 "cortex from intrinsic functional connectivity MRI. Cereb Cortex "
                 "28(9):3095-3114. doi:10.1093/cercor/bhx179"),
    "tian": ("Tian et al. 2020",
             "Tian Y., Margulies D.S., Breakspear M., Zalesky A. (2020) Topographic organization "
             "of the human subcortex unveiled with functional connectivity gradients. Nat "
             "Neurosci 23:1421-1432. doi:10.1038/s41593-020-00711-6"),
    "templateflow": ("Ciric et al. 2022",
                     "Ciric R. et al. (2022) TemplateFlow: FAIR-sharing of multi-scale, "
                     "multi-species brain models. Nat Methods 19:1568-1571. "
                     "doi:10.1038/s41592-022-01681-2"),
    "gordon": ("Gordon et al. 2016",
               "Gordon E.M., Laumann T.O., Adeyemo B., Huckins J.F., Kelley W.M., Petersen S.E. "
               "(2016) Generation and evaluation of a cortical area parcellation from "
               "resting-state correlations. Cereb Cortex 26(1):288-303. doi:10.1093/cercor/bhu239"),
    "glasser": ("Glasser et al. 2016",
                "Glasser M.F. et al. (2016) A multi-modal parcellation of human cerebral cortex. "
                "Nature 536:171-178. doi:10.1038/nature18933"),
    "desikan2006": ("Desikan et al. 2006",
                    "Desikan R.S. et al. (2006) An automated labeling system for subdividing the "
                    "human cerebral cortex on MRI scans into gyral based regions of interest. "
                    "NeuroImage 31(3):968-980. doi:10.1016/j.neuroimage.2006.01.021"),
    "frazier2005": ("Frazier et al. 2005",
                    "Frazier J.A. et al. (2005) Structural brain magnetic resonance imaging of "
                    "limbic and thalamic volumes in pediatric bipolar disorder. Am J Psychiatry "
                    "162(7):1256-1265."),
    "makris2006": ("Makris et al. 2006",
                   "Makris N. et al. (2006) Decreased volume of left and total anterior insular "
                   "lobule in schizophrenia. Schizophr Res 83(2-3):155-171."),
    "goldstein2007": ("Goldstein et al. 2007",
                      "Goldstein J.M. et al. (2007) Hypothalamic abnormalities in schizophrenia: "
                      "sex effects and genetic vulnerability. Biol Psychiatry 61(8):935-945."),
    "aal": ("Tzourio-Mazoyer et al. 2002",
            "Tzourio-Mazoyer N. et al. (2002) Automated anatomical labeling of activations in SPM "
            "using a macroscopic anatomical parcellation of the MNI MRI single-subject brain. "
            "NeuroImage 15(1):273-289. doi:10.1006/nimg.2001.0978"),
    "aal3": ("Rolls et al. 2020",
             "Rolls E.T., Huang C.C., Lin C.P., Feng J., Joliot M. (2020) Automated anatomical "
             "labelling atlas 3. NeuroImage 206:116189. doi:10.1016/j.neuroimage.2019.116189"),
    "power2011": ("Power et al. 2011",
                  "Power J.D. et al. (2011) Functional network organization of the human brain. "
                  "Neuron 72(4):665-678. doi:10.1016/j.neuron.2011.09.006"),
    "difumo": ("Dadi et al. 2020",
               "Dadi K. et al. (2020) Fine-grain atlases of functional modes for fMRI analysis. "
               "NeuroImage 221:117126. doi:10.1016/j.neuroimage.2020.117126"),
    "friston24": ("Friston et al. 1996",
                  "Friston K.J., Williams S., Howard R., Frackowiak R.S., Turner R. (1996) "
                  "Movement-related effects in fMRI time-series. Magn Reson Med 35(3):346-355."),
    "compcor": ("Behzadi et al. 2007",
                "Behzadi Y., Restom K., Liau J., Liu T.T. (2007) A component based noise "
                "correction method (CompCor) for BOLD and perfusion based fMRI. NeuroImage "
                "37(1):90-101. doi:10.1016/j.neuroimage.2007.04.042"),
    "power2012": ("Power et al. 2012",
                  "Power J.D., Barnes K.A., Snyder A.Z., Schlaggar B.L., Petersen S.E. (2012) "
                  "Spurious but systematic correlations in functional connectivity MRI networks "
                  "arise from subject motion. NeuroImage 59(3):2142-2154. "
                  "doi:10.1016/j.neuroimage.2011.10.018"),
    "power2015": ("Power et al. 2015",
                  "Power J.D., Schlaggar B.L., Petersen S.E. (2015) Recent progress and "
                  "outstanding issues in motion correction in resting state fMRI. NeuroImage "
                  "105:536-551. doi:10.1016/j.neuroimage.2014.10.044"),
    "ciric2017": ("Ciric et al. 2017",
                  "Ciric R. et al. (2017) Benchmarking of participant-level confound regression "
                  "strategies for the control of motion artifact in studies of functional "
                  "connectivity. NeuroImage 154:174-187. "
                  "doi:10.1016/j.neuroimage.2017.03.020"),
    "wang2024": ("Wang et al. 2024",
                 "Wang H.-T. et al. (2024) Continuous evaluation of denoising strategies in "
                 "resting-state fMRI connectivity using fMRIPrep and Nilearn. PLoS Comput Biol "
                 "20(3):e1011942. doi:10.1371/journal.pcbi.1011942"),
    "brainmass": ("Yang et al. 2024",
                  "Yang Y. et al. (2024) BrainMass: advancing brain network analysis for "
                  "diagnosis with large-scale self-supervised learning. IEEE Trans Med Imaging. "
                  "doi:10.1109/TMI.2024.3414476"),
    "brainjepa": ("Dong et al. 2024",
                  "Dong Z. et al. (2024) Brain-JEPA: brain dynamics foundation model with "
                  "gradient positioning and spatiotemporal masking. Advances in Neural "
                  "Information Processing Systems 37 (NeurIPS 2024). arXiv:2409.19407"),
    "byol": ("Grill et al. 2020",
             "Grill J.-B. et al. (2020) Bootstrap your own latent: a new approach to "
             "self-supervised learning. Advances in Neural Information Processing Systems 33."),
    "abide": ("Di Martino et al. 2014",
              "Di Martino A. et al. (2014) The autism brain imaging data exchange: towards a "
              "large-scale evaluation of the intrinsic brain architecture in autism. Mol "
              "Psychiatry 19(6):659-667. doi:10.1038/mp.2013.78"),
    "abide_pcp": ("Craddock et al. 2013",
                  "Craddock C. et al. (2013) The Neuro Bureau Preprocessing Initiative: open "
                  "sharing of preprocessed neuroimaging data and derivatives. Front Neuroinform "
                  "(Neuroinformatics 2013 abstract). doi:10.3389/conf.fninf.2013.09.00041"),
    "ig": ("Sundararajan et al. 2017",
           "Sundararajan M., Taly A., Yan Q. (2017) Axiomatic attribution for deep networks. "
           "Proceedings of the 34th International Conference on Machine Learning, PMLR "
           "70:3319-3328."),
    "ledoitwolf": ("Ledoit & Wolf 2004",
                   "Ledoit O., Wolf M. (2004) A well-conditioned estimator for large-dimensional "
                   "covariance matrices. J Multivar Anal 88(2):365-411. "
                   "doi:10.1016/S0047-259X(03)00096-4"),
    "bootstrap": ("Efron & Tibshirani 1993",
                  "Efron B., Tibshirani R.J. (1993) An Introduction to the Bootstrap. Chapman & "
                  "Hall/CRC."),
    "combat": ("Johnson et al. 2007",
               "Johnson W.E., Li C., Rabinovic A. (2007) Adjusting batch effects in microarray "
               "expression data using empirical Bayes methods. Biostatistics 8(1):118-127. "
               "doi:10.1093/biostatistics/kxj037"),
    "fortin2017": ("Fortin et al. 2017",
                   "Fortin J.-P. et al. (2017) Harmonization of multi-site diffusion tensor "
                   "imaging data. NeuroImage 161:149-170. "
                   "doi:10.1016/j.neuroimage.2017.08.047"),
    "fortin2018": ("Fortin et al. 2018",
                   "Fortin J.-P. et al. (2018) Harmonization of cortical thickness measurements "
                   "across scanners and sites. NeuroImage 167:104-120. "
                   "doi:10.1016/j.neuroimage.2017.11.024"),
    "neuroharmonize": ("Pomponio et al. 2020",
                       "Pomponio R. et al. (2020) Harmonization of large MRI datasets for the "
                       "analysis of brain imaging patterns throughout the lifespan. NeuroImage "
                       "208:116450. doi:10.1016/j.neuroimage.2019.116450"),
    "margulies2016": ("Margulies et al. 2016",
                      "Margulies D.S. et al. (2016) Situating the default-mode network along a "
                      "principal gradient of macroscale cortical organization. PNAS "
                      "113:12574-12579."),
    "vosdewael2020": ("Vos de Wael et al. 2020",
                      "Vos de Wael R. et al. (2020) BrainSpace: a toolbox for the analysis of "
                      "macroscale gradients in neuroimaging and connectomics datasets. Commun "
                      "Biol 3:103."),
    "coifman2006": ("Coifman & Lafon 2006",
                    "Coifman R.R. & Lafon S. (2006) Diffusion maps. Appl Comput Harmon Anal "
                    "21:5-30."),
    "vicreg": ("Bardes et al. 2022",
               "Bardes A., Ponce J. & LeCun Y. (2022) VICReg: Variance-invariance-covariance "
               "regularization for self-supervised learning. ICLR 2022."),
    "mo2024": ("Mo & Tong 2024",
               "Mo S. & Tong S. (2024) Connecting joint-embedding predictive architecture with "
               "contrastive self-supervised learning. NeurIPS 2024."),
    "varoquaux2010": ("Varoquaux et al. 2010",
                      "Varoquaux G., Baronnet F., Kleinschmidt A., Fillard P. & Thirion B. "
                      "(2010) Detection of brain functional-connectivity difference in "
                      "post-stroke patients using group-level covariance modeling. MICCAI 2010, "
                      "LNCS 6361:200-208."),
    "dadi2019": ("Dadi et al. 2019",
                 "Dadi K. et al. (2019) Benchmarking functional connectome-based predictive "
                 "models for resting-state fMRI. NeuroImage 192:115-134."),
    "arsigny2007": ("Arsigny et al. 2007",
                    "Arsigny V., Fillard P., Pennec X. & Ayache N. (2007) Geometric means in a "
                    "novel vector space structure on symmetric positive-definite matrices. SIAM "
                    "J Matrix Anal Appl 29:328-347."),
}


def reference(key: str) -> str:
    """The full reference of ``key`` (see :data:`REFERENCES`)."""
    return REFERENCES[key][1]
