"""The atlases bidsfm knows: each release (template, image, label table) with its public origin.

Every file below is a byte-for-byte copy of a file in a public GitHub repository at a fixed
commit; its sha256 is checked whatever the copy read (the package's own, the cache, a
download). The files and their checks are described in ``docs/atlases.md`` and, for the copies
in ``../shared/data/atlases``, in that folder's ``SOURCES.md``. The layout of the cache
(``$BIDSFM_HOME/atlases``) and of the package's bundled copies follows ``relpath``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .names import DIFUMO_DIMENSIONS, SCHAEFER_NETWORKS, SCHAEFER_PARCELS, TIAN_SCALES

#: Templates tried, after the run's own, for atlases released in several.
TEMPLATE_ORDER = ("MNI152NLin2009cAsym", "MNI152NLin6Asym")

CC200_URL = (
    "https://raw.githubusercontent.com/preprocessed-connectomes-project/abide/"
    "fda1ec5d3f53eb97d94352e779f37c3ce46caee1/preprocessing/resources/abide_rois/CC200.nii.gz"
)
CC200_SHA256 = "dd444ad89dd6b84ab44555eb8b319cb52661612e3f318905fc75466090b8e626"

_COMMITS = {
    "abide": ("preprocessed-connectomes-project/abide", "fda1ec5d3f53eb97d94352e779f37c3ce46caee1"),
    "neurocaps": ("donishadsmith/neurocaps", "0711b69203712f6e24b96855eee78ec73e9de60e"),
    "neuroparc": ("neurodata/neuroparc", "5a5e7469671e65cb58087c47b69d0edb71dc2966"),
    "tian": ("yetianmed/subcortex", "62751401be0dba587442799748a886d5d87b8364"),
    "xcpEngine-07cd": ("PennLINC/xcpEngine", "07cd26eee79fb88970669d20ade82d91ca68d92b"),
    "xcpEngine-908b": ("PennLINC/xcpEngine", "908bddbff8a79d9d0ffbd36e32a0c86ec5b44643"),
    "xcpEngine-b1d4": ("PennLINC/xcpEngine", "b1d4c6a2b387159ca3e8800ce7d3f5a2b7f595ac"),
    "xcpEngine-d799": ("PennLINC/xcpEngine", "d7998c89bf4b77060479f164db8914d30afe5050"),
    "xcp_d-8fca": ("PennLINC/xcp_d", "8fcad7b048b9f334731d58636e35da30a9ef06de"),
    "xcp_d-b785": ("PennLINC/xcp_d", "b7854124c9b4d14197bd744434d2f9eaf62f776a"),
    "xcp_d-e38d": ("PennLINC/xcp_d", "e38d9019622456a909dce2e0d93e149597979aa9"),
}


@dataclass(frozen=True)
class RemoteFile:
    """One file of an atlas release and where it comes from.

    Attributes
    ----------
    relpath : str
        Path in the cache, in the package's bundled folder and in ``../shared/data/atlases``.
    source : str
        Key of :data:`_COMMITS` (repository and commit).
    path : str
        Path inside the source repository.
    sha256 : str
        Expected sha256 of the bytes.
    """

    relpath: str
    source: str
    path: str
    sha256: str

    @property
    def repo(self) -> str:
        """``owner/name`` of the source repository."""
        return _COMMITS[self.source][0]

    @property
    def commit(self) -> str:
        """Full commit id the URL is pinned to."""
        return _COMMITS[self.source][1]

    @property
    def url(self) -> str:
        """Raw GitHub URL of the file at :attr:`commit`."""
        return f"https://raw.githubusercontent.com/{self.repo}/{self.commit}/{self.path}"


@dataclass(frozen=True)
class Release:
    """An atlas image in one template, with its label table.

    Attributes
    ----------
    template : str
        TemplateFlow id of the image's space.
    image : RemoteFile
    labels : RemoteFile or None
        Label table; None = names generated from the atlas name (CC200).
    label_format : str
        How to read ``labels`` (see :func:`bidsfm.atlases.labels.read_label_file`).
    note : str
        Anything a user should know about this copy (written into the sidecars).
    """

    template: str
    image: RemoteFile
    labels: RemoteFile | None = None
    label_format: str = "tsv"
    note: str = ""

    @property
    def files(self) -> tuple[RemoteFile, ...]:
        """The image and, if any, the label table."""
        return (self.image,) if self.labels is None else (self.image, self.labels)


@dataclass(frozen=True)
class AtlasRecord:
    """A registry atlas.

    Attributes
    ----------
    name : str
        Registry name (alphanumeric, used in output names).
    n_rois : int
        Number of ROIs (rows of the label table).
    description : str
    citation : str
        Reference(s) to cite.
    licence : str
    releases : tuple of Release
        In order of preference within a template.
    templateflow : tuple of str or None
        ``(atlas, desc)`` of its TemplateFlow files, when TemplateFlow has it.
    kind : str
        ``"dseg"`` (labels) or ``"probseg"`` (probabilistic maps).
    """

    name: str
    n_rois: int
    description: str
    citation: str
    licence: str
    releases: tuple[Release, ...] = ()
    templateflow: tuple[str, str] | None = None
    kind: str = "dseg"
    templates: tuple[str, ...] = field(default=TEMPLATE_ORDER)


def _f(relpath: str, source: str, path: str, sha256: str) -> RemoteFile:
    return RemoteFile(relpath, source, path, sha256)


_NLIN6, _NLIN2009 = "MNI152NLin6Asym", "MNI152NLin2009cAsym"
_XCPENGINE_2009C = (
    "xcpEngine maintainers' MNI152NLin2009cAsym version of the FSL-space (MNI152NLin6Asym) file "
    "(xcpEngine commit 95abe9f; the transform used is not documented)")

# -- CC200 -----------------------------------------------------------------------------------
_CC200 = AtlasRecord(
    "CC200", 200, "Craddock 2012 CC200, 200 ROIs, FSL MNI152 (MNI152NLin6Asym), 3 mm",
    "Craddock RC et al. (2012) Hum Brain Mapp 33(8):1914-1928",
    "distributed by the Preprocessed Connectomes Project (ABIDE Preprocessed)",
    (Release(_NLIN6, _f("CC200.nii.gz", "abide", "preprocessing/resources/abide_rois/"
                        "CC200.nii.gz", CC200_SHA256), None, "generated"),),
)

# -- Schaefer 2018 ---------------------------------------------------------------------------
_SCHAEFER_CITE = ("Schaefer A et al. (2018) Cereb Cortex 28(9):3095-3114; Yeo BTT et al. "
                  "(2011) J Neurophysiol 106(3):1125-1165")
_NILEARN_SCHAEFER = "tests/data/nilearn_data/schaefer_2018/"
#: (parcels, networks) -> label file (relpath, source, path, sha256, format)
_SCHAEFER_LABELS: dict[tuple[int, int], tuple[RemoteFile, str]] = {}
for _n, _k, _sha in (
    (100, 7, "db6c9bb9aed87f78d8aed8732e0325f84acd4577a6b1bb291995404ae248e5f3"),
    (100, 17, "125210a2a185ad0a0cdb1516b33eaee091996c63183eff7eb272d1d5332e8d94"),
    (400, 7, "34cf6995e59ecd2b127c70587b46dab5d44cf103c65d4c57ebf9d2668c028247"),
    (400, 17, "03b713d1d8ad10574dc7c9fdd2c0089e52074ab7cc31568d3fffd14b3abab236"),
    (1000, 7, "c541fe617c9e6e3613e800af3c7882429a525650c6e15da2cd5c88752f3d5fc1"),
    (1000, 17, "5267d627480b7a1d7b796413a5e2e7be5b67aff368024dc9b77933220f1f7d60"),
):
    _name = f"Schaefer2018_{_n}Parcels_{_k}Networks_order.txt"
    _SCHAEFER_LABELS[(_n, _k)] = (
        _f(f"schaefer2018/{_name}", "neurocaps", _NILEARN_SCHAEFER + _name, _sha), "schaefer_txt")
_SCHAEFER_LABELS[(200, 7)] = (_f(
    "schaefer2018/Schaefer2018_200Parcels_7Networks_order_info.txt", "xcp_d-b785",
    "xcp_d/data/ciftiatlas/Schaefer2018_200Parcels_7Networks_order_info.txt",
    "d795742002e0818c643dc00fcf8399040d8654dbb91275a144ed3e45d646cf1f"), "cbig_info")
_SCHAEFER_LABELS[(200, 17)] = (_f(
    "schaefer2018/Schaefer2018_200Parcels_17Networks_order_info.tsv", "xcp_d-8fca",
    "xcp_d/data/niftiatlas/Schaefer2018_200Parcels_17Networks_order_info.tsv",
    "14b93df46a1b97b9dd51d73f0916677595ae682a449696ce1b48b85574b87177"), "tsv")
# XCP-D's copies of CBIG v0.14.3 (voxel-identical to CBIG's files at 100, 200, 400, 1000)
_V0143 = {
    300: ("ec83fbd2c513fb14c8909172f65298db34d874d66de4ae07ad993a1fabdc3664",
          "ea29231c3da76ab5ab4e3b8005613bb9f7b560fbcfc799454b36086b706f2f19"),
    500: ("7c7fda92bd57b1e4323d597a25847b15bc53b5e16265753571c62f6d6d095bae",
          "d0af87a07179d3d93fae797c574e65200702c81696e4fdb7121de8eb9629273f"),
    600: ("ac26b343a4b5d942b1f4ad1fe78e85d39614ec9de025e6d795285c2b2a140050",
          "d51b2ec25f5f2100322d97695c62e49ba19b4457b16ff9f7d5de97a10e7c6f3c"),
    700: ("586508c60a12a361f21282fefd8d29d03f56d9a797b19036891db9e5a55c14c8",
          "c2c34adda356b4edbb072e2336ce1d0ec63a46f99b1d722b6feb236fa55fbeed"),
    800: ("15514abfdabec90be445deac881e96356940e65be3816e80fc7c124c080f8c4d",
          "e48fedfe5a66d5ff80104b4298dccbd0e3c3142ed70eeaee2bd64d9714cf450b"),
    900: ("554e5b5a785f0e87b7d0721ff0bf5b281d1dd466aae807edb9e6280bfd7a3708",
          "b96661b95952496b6beda36c1396a340c7d1cc7d67207149a3c23c7d0a6f60f3"),
}
for _n, (_img_sha, _tsv_sha) in _V0143.items():
    _tsv = f"atlas-Schaefer2018v0143_desc-{_n}Parcels17Networks_dseg.tsv"
    _SCHAEFER_LABELS[(_n, 17)] = (
        _f(f"schaefer2018/{_tsv}", "xcp_d-e38d", f"xcp_d/data/atlases/{_tsv}", _tsv_sha), "tsv")

#: (parcels, networks) -> MNI152NLin6Asym (FSL MNI152) 2 mm image
_SCHAEFER_NLIN6: dict[tuple[int, int], RemoteFile] = {}
for _n, _k, _src, _sha in (
    (100, 7, "neurocaps", "101cb2e643531826e5d52d35751f3cf7134c394b08b8ce0affa259a224350f67"),
    (100, 17, "neurocaps", "5f85dbe3c5eadd1892c8b6e6363a504b97784b6c74591be036e77cac6511c0e9"),
    (200, 17, "xcp_d-8fca", "854edfef8a964bbc9669262b959661e98d6c92c0a01d5e8b3a0b545bc4e7c835"),
    (400, 7, "neurocaps", "359da271b5d569ae76112693ef4f303cb744c5e060306ca45eca40bddacc85ac"),
    (400, 17, "xcp_d-8fca", "ca925b717731bfe30b550234d5248b1280f62be4577cd6906b0cf82841fb367d"),
    (1000, 7, "neurocaps", "4dd1611aebe3a828bcb02474d5b07a05e9cae56a733e707fd1277cfce9a1a380"),
    (1000, 17, "neurocaps", "6cec87e7957cdd9f5ec46cc78b8946f8d67bf25dbddd98a0664408b45efe139f"),
):
    _name = f"Schaefer2018_{_n}Parcels_{_k}Networks_order_FSLMNI152_2mm.nii.gz"
    _path = (_NILEARN_SCHAEFER + _name if _src == "neurocaps"
             else f"xcp_d/data/niftiatlas/{_name}")
    _SCHAEFER_NLIN6[(_n, _k)] = _f(f"schaefer2018/{_name}", _src, _path, _sha)
_SCHAEFER_NLIN6[(200, 7)] = _f(
    "schaefer2018/schaefer200x7MNI.nii.gz", "xcpEngine-b1d4",
    "atlas/schaefer200x7/schaefer200x7MNI.nii.gz",
    "474accdd951ecf80624cd445a1cb07a3caf93bb581bf55588da6f6e63189f2e7")
for _n, (_img_sha, _tsv_sha) in _V0143.items():
    _name = f"tpl-MNI152NLin6Asym_atlas-Schaefer2018v0143_res-02_desc-{_n}Parcels17Networks_dseg"
    _SCHAEFER_NLIN6[(_n, 17)] = _f(f"schaefer2018/{_name}.nii.gz", "xcp_d-e38d",
                                   f"xcp_d/data/atlases/{_name}.nii.gz", _img_sha)

#: (parcels, networks) -> xcpEngine's MNI152NLin2009cAsym 2 mm image
_SCHAEFER_2009C: dict[tuple[int, int], RemoteFile] = {}
for _n, _k, _sha in (
    (100, 7, "7221cee56943599833dc2b98aac56626584e9c0067f28c768b46f7b7ff7408ac"),
    (100, 17, "786750f9c1ae995e3fbcb785e1c65ca7978d41cc204675305314da599a8158ae"),
    (200, 7, "0f109adc4b8036d6185c1939bc829df504fd76a1c534a948bd337be29f12cbda"),
    (200, 17, "9017a43ee1e73d5f6e094277688bcd51b0e04b2b92edaf60788097dfe8eea935"),
    (400, 7, "e5dfdc5674fe6122609fa8d223d7d7c17f989ff1b03d7746559c95b11da1d264"),
    (400, 17, "3ee61016960fde4b1296fd6632da338d80561ff3610796189a568bb2c79e6948"),
):
    _name = f"schaefer{_n}x{_k}MNI.nii.gz"
    _SCHAEFER_2009C[(_n, _k)] = _f(f"xcpengine_MNI152NLin2009cAsym/{_name}", "xcpEngine-d799",
                                   f"atlas/schaefer{_n}x{_k}/{_name}", _sha)


def _schaefer(parcels: int, networks: int) -> AtlasRecord:
    releases = []
    labels = _SCHAEFER_LABELS.get((parcels, networks))
    if labels is not None:
        if (parcels, networks) in _SCHAEFER_2009C:
            releases.append(Release(_NLIN2009, _SCHAEFER_2009C[(parcels, networks)], *labels,
                                    note=_XCPENGINE_2009C))
        if (parcels, networks) in _SCHAEFER_NLIN6:
            releases.append(Release(_NLIN6, _SCHAEFER_NLIN6[(parcels, networks)], *labels))
    return AtlasRecord(
        f"Schaefer{parcels}x{networks}", parcels,
        f"Schaefer 2018 local-global cortical parcellation, {parcels} parcels, {networks} "
        "networks", _SCHAEFER_CITE, "CBIG licence (MIT-style)", tuple(releases),
        templateflow=("Schaefer2018", f"{parcels}Parcels{networks}Networks"))


# -- Tian 2020 subcortex ---------------------------------------------------------------------
_TIAN_DIR = "Group-Parcellation/3T/Subcortex-Only/"
_TIAN_N = {1: 16, 2: 32, 3: 50, 4: 54}
_TIAN_SHA = {  # scale -> (2009cAsym 2 mm, NLin6Asym 2 mm .nii, NLin6Asym 1 mm, label.txt)
    1: ("8dfc445aebd2177c30e4f116dba4aee6be0dd96a0dfc522a95037e5ab09cf36a",
        "a6f2e6ac166d1c2a960d193e9d91ca7d5de8b8382db7702c304ac89e3760e212",
        "cac4fe559304ce97c5e6905c33e7eeff0139750a51dbfdbd1b933c5f6ba10c42",
        "f8dc7acae3483952d41d49b9145b4d13c5bc28da1c410114a561a5efda55db8c"),
    2: ("8ba4adc6b50fc68f9ccc70c16e627486e6bb44306997af578cc3682f8103fa58",
        "e79ee80b0a9c698e3c7257785f288cff6a68cfee8802830cb2a1b7141d10740f",
        "d6caf2c3760264dd4dd4a06b156f12fef44cad6cedf611ca9cd48d8e261e9447",
        "f1c498182107b1a3ceae737f3c140e8053e045d0e9ec0a71bfa05ae8a17d2be5"),
    3: ("f996886fe9cc497b29b0502b8a202022152868c3880f7df8c4f0b07eddb2fd04",
        "df86741fedcf5814cf9c91817f794f19b92e149f057335a5568b5fc32bb17bc7",
        "9a27efe66b4ebda412887f2a28187d9bbdf81f44b78c9dc051ab7c88c8f6798f",
        "66f0415163459e4b9e8524efeff138b8889a04f635c6e053f663c93fbacb215d"),
    4: ("b7cbc4a73df19e2f0e00afb03e0bc8a112be934699ab61b9a07cf171f92d029a",
        "07346e8a5203147da617995bdeb57c91f61e36dc65c6407bf94d5d87bfc31ce3",
        "baef44adc46b9f4a5ebe1e2ac180693a9c63fc80af7b08743829d2dc4c1f9622",
        "cf83c88cddc3254ced389be1788cd172db4a01cb00f205fdd428804d994b930b"),
}


def _tian(scale: int) -> AtlasRecord:
    stem = f"Tian_Subcortex_S{scale}_3T"
    s2009, s2, s1, slab = _TIAN_SHA[scale]
    label = _f(f"tian2020/{stem}_label.txt", "tian", f"{_TIAN_DIR}{stem}_label.txt", slab)

    def img(suffix: str, sha: str) -> RemoteFile:
        return _f(f"tian2020/{stem}{suffix}", "tian", f"{_TIAN_DIR}{stem}{suffix}", sha)

    return AtlasRecord(
        f"TianS{scale}", _TIAN_N[scale],
        f"Tian 2020 Melbourne subcortex atlas, 3T, scale {scale} ({_TIAN_N[scale]} ROIs)",
        "Tian Y et al. (2020) Nat Neurosci 23:1421-1432",
        "Melbourne Subcortex Atlas licence (free use; cite the paper)",
        (Release(_NLIN2009, img("_2009cAsym.nii.gz", s2009), label, "lines"),
         Release(_NLIN6, img(".nii", s2), label, "lines"),
         Release(_NLIN6, img("_1mm.nii.gz", s1), label, "lines")),
    )


# -- Gordon, Glasser, Harvard-Oxford, AAL, Power ---------------------------------------------
_GORDON_NAMES = _f("gordon2016/gordon333NodeNames.txt", "xcpEngine-07cd",
                   "atlas/gordon333/gordon333NodeNames.txt",
                   "5336a7b5fbdc5ed06659a68cd93c5de54cafd49a8df6a894d75e7d7e99b6fe24")
_GLASSER_NAMES = _f("glasser2016/glasser360NodeNames.txt", "xcpEngine-07cd",
                    "atlas/glasser360/glasser360NodeNames.txt",
                    "bc01c88392cb2b14e9e0cb46e4839861f1a9fb8e43a4ccd6fe73b4341740d506")
_HO_CITE = ("Desikan RS et al. (2006) NeuroImage 31:968-980; Frazier JA et al. (2005) Am J "
            "Psychiatry 162:1256-1265; Makris N et al. (2006) Schizophr Res 83:155-171; "
            "Goldstein JM et al. (2007) Biol Psychiatry 61:935-945")
_HO_DIR = "atlases/label/Human/"
_AAL_DIR = "tests/data/nilearn_data/"

_OTHERS = (
    AtlasRecord(
        "Gordon333", 333, "Gordon 2016 cortical parcellation, 333 parcels",
        "Gordon EM et al. (2016) Cereb Cortex 26(1):288-303", "none stated by the authors",
        (Release(_NLIN2009, _f("xcpengine_MNI152NLin2009cAsym/gordon333MNI.nii.gz",
                               "xcpEngine-d799", "atlas/gordon333/gordon333MNI.nii.gz",
                               "5168a4d43e4d6ebdbbac6949b76585a649139b6a6755fd7d1c2f2b4195186875"),
                 _GORDON_NAMES, "lines", note=_XCPENGINE_2009C),
         Release(_NLIN6, _f("gordon2016/CAPRSC_space-MNI152NLin6_res-2x2x2.nii.gz", "neuroparc",
                            _HO_DIR + "CAPRSC_space-MNI152NLin6_res-2x2x2.nii.gz",
                            "28d5e1de2f44201a31eaa3e5726b3ee097e3b815928789bb5f985e5eafdc89ff"),
                 _GORDON_NAMES, "lines"),
         Release(_NLIN6, _f("gordon2016/gordon333MNI.nii.gz", "xcpEngine-07cd",
                            "atlas/gordon333/gordon333MNI.nii.gz",
                            "2b3adbdf727d5ccca6da394a97f83383e8d39b7a01da1bad359f48059f6f122c"),
                 _GORDON_NAMES, "lines")),
    ),
    AtlasRecord(
        "Glasser360", 360, "Glasser 2016 HCP-MMP1.0, 360 cortical areas (volumetric)",
        "Glasser MF et al. (2016) Nature 536:171-178", "HCP data use terms",
        (Release(_NLIN2009, _f("xcpengine_MNI152NLin2009cAsym/glasser360MNI.nii.gz",
                               "xcpEngine-d799", "atlas/glasser360/glasser360MNI.nii.gz",
                               "882312769ed635cfbff68977e5e813ea7e2a87a7efb77bd3ccbba553cb4ae3fb"),
                 _GLASSER_NAMES, "lines", note=_XCPENGINE_2009C),
         Release(_NLIN6, _f("glasser2016/glasser360MNI.nii.gz", "xcpEngine-07cd",
                            "atlas/glasser360/glasser360MNI.nii.gz",
                            "abe58d2952b3636e7be4c2bb318f3ed03d09b49b158cb35e185fce099f1c8205"),
                 _GLASSER_NAMES, "lines")),
    ),
    AtlasRecord(
        "HarvardOxfordCort", 48, "Harvard-Oxford cortical atlas, max-probability, 25 % "
        "threshold, 48 bilateral ROIs (FSL)", _HO_CITE, "FSL licence (non-commercial)",
        (Release(_NLIN6, _f("harvardoxford/HarvardOxfordcort-maxprob-thr25_space-MNI152NLin6_"
                            "res-2x2x2.nii.gz", "neuroparc", _HO_DIR + "HarvardOxfordcort-maxprob-"
                            "thr25_space-MNI152NLin6_res-2x2x2.nii.gz",
                            "71e1af0f57d85c7730028b9a0b777f916671e7141b7ff3b188dc38e5b55e531b"),
                 _f("harvardoxford/HarvardOxfordcort-maxprob.csv", "neuroparc",
                    _HO_DIR + "Anatomical-labels-csv/HarvardOxfordcort-maxprob.csv",
                    "8fbe6d088416fbb4494a5bb15d948c2ed518fcfff50393aa75af21915d44a2d7"),
                 "csv"),),
    ),
    AtlasRecord(
        "HarvardOxfordSub", 21, "Harvard-Oxford subcortical atlas, max-probability, 25 % "
        "threshold, 21 ROIs (FSL)", _HO_CITE, "FSL licence (non-commercial)",
        (Release(_NLIN6, _f("harvardoxford/HarvardOxfordsub-maxprob-thr25_space-MNI152NLin6_"
                            "res-2x2x2.nii.gz", "neuroparc", _HO_DIR + "HarvardOxfordsub-maxprob-"
                            "thr25_space-MNI152NLin6_res-2x2x2.nii.gz",
                            "c4c6cd6e1b68a8fb1153ce168ae84f36e5d20561c7382d3a35fb63c542d6d50f"),
                 _f("harvardoxford/HarvardOxfordsub-maxprob.csv", "neuroparc",
                    _HO_DIR + "Anatomical-labels-csv/HarvardOxfordsub-maxprob.csv",
                    "a053e9855f7885b52942e94224b3786e5e501d5190e10526d96b79d650ba352b"),
                 "csv_swap_lr",
                 note="neuroparc's label table names Left and Right the wrong way round "
                      "(value 1 lies at x < 0 but is named Right_...); bidsfm swaps them"),),
    ),
    AtlasRecord(
        "AAL116", 116, "Automated Anatomical Labelling (SPM12 release), 116 ROIs, labelled on "
        "the MNI single-subject (Colin27) brain", "Tzourio-Mazoyer N et al. (2002) "
        "NeuroImage 15:273-289", "GNU GPL (AAL readme)",
        (Release("MNIColin27", _f("aal/AAL.nii", "neurocaps",
                                  _AAL_DIR + "aal_SPM12/aal/atlas/AAL.nii",
                                  "91e8ec62a293c2a28c8e7343f37abb978ab941c5e26fbc496945c66d073a2cd8"),
                 _f("aal/AAL.xml", "neurocaps", _AAL_DIR + "aal_SPM12/aal/atlas/AAL.xml",
                    "1a0f2bb952b700fa94f5156b544cf238f2e8d0e0e5ebedaefac835938b7609f3"),
                 "aal_xml"),),
        templates=("MNIColin27",),
    ),
    AtlasRecord(
        "AAL3v1", 166, "Automated Anatomical Labelling 3 (v1), 166 ROIs",
        "Rolls ET et al. (2020) NeuroImage 206:116189", "same terms as AAL (GIN)",
        (Release("MNIColin27", _f("aal/AAL3v1.nii.gz", "neurocaps",
                                  _AAL_DIR + "aal_3v2/AAL3/AAL3v1.nii.gz",
                                  "5fbc211ffa4e97a69768e1343da93de30799a7e8b3867d2b2cb41baf852452a1"),
                 _f("aal/AAL3v1.nii.txt", "neurocaps", _AAL_DIR + "aal_3v2/AAL3/AAL3v1.nii.txt",
                    "5f6ce39ecc5d10742b7797fc105d1dc7b497765366db77f8eb3900d899aefa26"),
                 "aal3_txt"),),
        templates=("MNIColin27",),
    ),
    AtlasRecord(
        "Power264", 264, "Power 2011, 264 spheres of 5 mm radius (xcpEngine image)",
        "Power JD et al. (2011) Neuron 72(4):665-678", "MIT (xcpEngine)",
        (Release(_NLIN6, _f("power2011/power264MNI.nii.gz", "xcpEngine-908b",
                            "atlas/power264/power264MNI.nii.gz",
                            "5578e415350245a8824a735e33b062efc5259ae665ca4c9c84adc59fe058debf"),
                 _f("power2011/power264NodeNames.txt", "xcpEngine-908b",
                    "atlas/power264/power264NodeNames.txt",
                    "8d6b5e9a348138b00f4e6c34e6d9d7a70a2d444999d58c9064ddd8a86f8a89a7"),
                 "lines"),),
    ),
)


def _difumo(dim: int) -> AtlasRecord:
    return AtlasRecord(
        f"DiFuMo{dim}", dim, f"DiFuMo {dim} probabilistic functional modes",
        "Dadi K et al. (2020) NeuroImage 221:117126", "non-commercial research use",
        (), templateflow=("DiFuMo", f"{dim}dimensions"), kind="probseg")


REGISTRY: dict[str, AtlasRecord] = {_CC200.name: _CC200}
REGISTRY.update({r.name: r for r in (_schaefer(n, k) for n in SCHAEFER_PARCELS
                                     for k in SCHAEFER_NETWORKS)})
REGISTRY.update({r.name: r for r in (_tian(s) for s in TIAN_SCALES)})
REGISTRY.update({r.name: r for r in _OTHERS})
REGISTRY.update({r.name: r for r in (_difumo(d) for d in DIFUMO_DIMENSIONS)})

#: Files that ship inside the package (``bidsfm/data/atlases``): the default atlas and what the
#: demo needs (Schaefer400x17 and Tian S1-S4 in MNI152NLin2009cAsym, fMRIPrep's default space).
BUNDLED: frozenset[str] = frozenset({
    "CC200.nii.gz",
    "xcpengine_MNI152NLin2009cAsym/schaefer400x17MNI.nii.gz",
    "schaefer2018/Schaefer2018_400Parcels_17Networks_order.txt",
    *(f"tian2020/Tian_Subcortex_S{s}_3T{x}" for s in TIAN_SCALES
      for x in ("_2009cAsym.nii.gz", "_label.txt")),
})


def available_atlases() -> list[str]:
    """Return the registry's atlas names (user files and BIDS-Atlas folders work as well).

    Returns
    -------
    list of str
        ``CC200``, every ``Schaefer{N}x{K}`` (N = 100..1000 step 100, K = 7 or 17),
        ``TianS1``...``TianS4``, ``Gordon333``, ``Glasser360``, ``HarvardOxfordCort``,
        ``HarvardOxfordSub``, ``AAL116``, ``AAL3v1``, ``Power264`` and ``DiFuMo{64..1024}``.
    """
    return list(REGISTRY)


def get_record(name: str) -> AtlasRecord:
    """The registry entry of a registry name (see :func:`canonical_atlas_name`).

    Raises
    ------
    KeyError
        Not a registry name.
    """
    return REGISTRY[name]


def all_files() -> dict[str, RemoteFile]:
    """Every file of every release, by relpath."""
    out: dict[str, RemoteFile] = {}
    for record in REGISTRY.values():
        for release in record.releases:
            for f in release.files:
                out[f.relpath] = f
    return out
