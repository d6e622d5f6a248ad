from deepcluster.cli import main

main()
