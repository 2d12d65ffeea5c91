-- The consolidated target database (basis data tunggal) written by mappings/*.yaml.
-- Primary keys are the mapping keys (upserts need them). Every table carries tunggal's
-- bookkeeping columns: which source wrote the row, at which source position, and when.

CREATE TABLE public.opd (
    kode_opd           varchar(30)  PRIMARY KEY,
    nama_opd           varchar(255),
    singkatan          varchar(50),
    alamat             text,
    aktif              boolean,
    sumber_data        varchar(30),
    _tunggal_source    text,
    _tunggal_position  numeric,
    _tunggal_ts        bigint
);

-- opd is written by e-Planning and SIPKD: each system's latest values per row are kept here and
-- merged into public.opd by the rules in e_planning.yaml (`tunggal schema --apply` creates it).
CREATE SCHEMA tunggal_contributions;

CREATE TABLE tunggal_contributions.public__opd (
    kode_opd           varchar(30)  NOT NULL,
    _tunggal_source    text         NOT NULL,
    nama_opd           varchar(255),
    singkatan          varchar(50),
    alamat             text,
    aktif              boolean,
    sumber_data        varchar(30),
    _tunggal_position  numeric      NOT NULL,
    _tunggal_ts        bigint       NOT NULL,
    _tunggal_state     text         NOT NULL DEFAULT 'live',
    PRIMARY KEY (kode_opd, _tunggal_source)
);

CREATE TABLE public.program (
    kode_program       varchar(30)  PRIMARY KEY,
    nama_program       varchar(500),
    kode_opd           varchar(30),
    sumber_data        varchar(30),
    _tunggal_source    text,
    _tunggal_position  numeric,
    _tunggal_ts        bigint
);

CREATE TABLE public.kegiatan (
    kode_kegiatan      varchar(30)  PRIMARY KEY,
    nama_kegiatan      varchar(500),
    label              text,
    kode_program       varchar(30),
    tahun              smallint,
    tanggal_mulai      date,
    tanggal_selesai    date,
    bulan_mulai        smallint,
    status             varchar(20),
    sumber_data        varchar(30),
    _tunggal_source    text,
    _tunggal_position  numeric,
    _tunggal_ts        bigint
);

CREATE TABLE public.sub_kegiatan (
    kode_sub_kegiatan  varchar(40)  PRIMARY KEY,
    kode_kegiatan      varchar(30),
    nama_sub_kegiatan  varchar(500),
    uraian             text,
    indikator          text,
    target_kinerja     numeric(18,2),
    satuan             varchar(50),
    sumber_data        varchar(30),
    _tunggal_source    text,
    _tunggal_position  numeric,
    _tunggal_ts        bigint
);

CREATE TABLE public.anggaran (
    kode_kegiatan      varchar(30),
    tahun              smallint,
    pagu               numeric(18,2),
    pagu_perubahan     numeric(18,2),
    sumber_dana        varchar(50),
    waktu_input        timestamptz,
    sumber_data        varchar(30),
    _tunggal_source    text,
    _tunggal_position  numeric,
    _tunggal_ts        bigint,
    PRIMARY KEY (kode_kegiatan, tahun)
);

CREATE TABLE public.pagu_indikatif (
    kode_opd           varchar(30),
    tahun              smallint,
    pagu_indikatif     numeric(18,2),
    sumber_data        varchar(30),
    _tunggal_source    text,
    _tunggal_position  numeric,
    _tunggal_ts        bigint,
    PRIMARY KEY (kode_opd, tahun)
);

CREATE TABLE public.penyedia (
    npwp               varchar(25)  PRIMARY KEY,
    nama_penyedia      varchar(255),
    alamat             text,
    nama_direktur      varchar(255),
    sumber_data        varchar(30),
    _tunggal_source    text,
    _tunggal_position  numeric,
    _tunggal_ts        bigint
);

CREATE TABLE public.kontrak (
    nomor_kontrak      varchar(100) PRIMARY KEY,
    kode_sub_kegiatan  varchar(40),
    npwp_penyedia      varchar(25),
    penyedia           varchar(255),
    nama_pekerjaan     text,
    nilai_kontrak      numeric(18,2),
    tanggal_kontrak    date,
    tahun              smallint,
    tanggal_mulai      date,
    tanggal_selesai    date,
    status             varchar(20),
    metode_pengadaan   varchar(50),
    sumber_data        varchar(30),
    _tunggal_source    text,
    _tunggal_position  numeric,
    _tunggal_ts        bigint
);

CREATE TABLE public.realisasi (
    nomor_sp2d         varchar(50)  PRIMARY KEY,
    kode_kegiatan      varchar(30),
    tanggal            date,
    tahun              smallint,
    bulan              smallint,
    nilai              numeric(18,2),
    uraian             text,
    status             varchar(20),
    waktu_validasi     timestamptz,
    jam_validasi       smallint,
    sumber_data        varchar(30),
    dihapus_pada       timestamptz,   -- soft delete (delete: soft in sipkd.yaml)
    _tunggal_source    text,
    _tunggal_position  numeric,
    _tunggal_ts        bigint
);
